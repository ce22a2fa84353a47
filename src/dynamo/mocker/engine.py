"""The mocker's asyncio engine: one scheduler + KV manager per data-parallel rank, passes timed by
the perf model, tokens streamed to each request as they are produced.

Pass timing keeps a simulated clock per rank and sleeps only when it runs ahead of the wall clock by
more than a millisecond: event-loop timers have millisecond granularity, and at high speedup ratios a
pass lasts microseconds, so sleeping every pass would make the mocker far slower than simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

from dynamo.kv_router.protocols import RouterEvent
from dynamo.llm.protocols.engine import CompletionUsage, LLMEngineOutput, PreprocessedRequest
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.bootstrap import BootstrapServer, wait_for_kv
from dynamo.mocker.logprobs import token_logprobs
from dynamo.mocker.perf_model import load_perf_model
from dynamo.mocker.scheduler import PassResult, Scheduler
from dynamo.runtime import errors
from dynamo.runtime.context import RequestContext

logger = logging.getLogger(__name__)

KvEventSink = Callable[[list[RouterEvent]], None]
LoadSink = Callable[[int, int], None]  # (dp_rank, kv_used_blocks)
PassSink = Callable[[int, PassResult], None]


class _Stream:
    __slots__ = ("cached_tokens", "done", "error", "handoff_s", "tokens", "waiter")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = False
        self.error: errors.DynamoError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.cached_tokens = 0
        #: prefill workers: simulated KV transfer time after the last token, before the handoff
        self.handoff_s = 0.0

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class _Rank:
    def __init__(self, engine: MockerEngine, rank: int) -> None:
        self.engine = engine
        self.rank = rank
        self.scheduler = Scheduler(engine.args, dp_rank=rank, worker_id=engine.worker_id,
                                   perf_model=engine.perf_model)
        self.streams: dict[str, _Stream] = {}
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_used_blocks = -1
        self.passes = 0

    async def run(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one pass must not hang every stream of this rank: fail them and go on.
                logger.exception("mocker rank %d: scheduling pass failed", self.rank)
                for rid, s in list(self.streams.items()):
                    self.scheduler.cancel(rid)
                    s.error = errors.Internal("mocker scheduling pass failed")
                    s.done = True
                    s.wake()

    async def _loop(self) -> None:
        sched = self.scheduler
        engine = self.engine
        t0 = time.monotonic()
        sim = 0.0
        while True:
            if sched.is_idle:
                self.wakeup.clear()
                await self.wakeup.wait()
                t0 = time.monotonic()
                sim = 0.0
            result = sched.step()
            self.passes += 1
            events = sched.drain_kv_events()
            if events and engine.kv_sink is not None:
                engine.kv_sink(events)
            sim += result.duration_ms / 1000.0
            lag = sim - (time.monotonic() - t0)
            # Tokens exist only once the pass is over: wait out the pass before delivering them.
            await asyncio.sleep(lag if lag > 0.001 else 0)
            self._deliver(result)
            self.report_load()
            if engine.pass_sink is not None:
                engine.pass_sink(self.rank, result)

    def report_load(self) -> None:
        """Publish ``kv_used_blocks`` if it changed (also outside passes: a cancel frees blocks too)."""
        used = self.scheduler.kv.num_active_blocks
        if used != self.last_used_blocks:
            self.last_used_blocks = used
            if self.engine.load_sink is not None:
                self.engine.load_sink(self.rank, used)

    def _deliver(self, result: PassResult) -> None:
        streams = self.streams
        for rid, cached in result.admitted:
            s = streams.get(rid)
            if s is not None:
                s.cached_tokens = cached
        for rid, token in result.emitted:
            s = streams.get(rid)
            if s is not None:
                s.tokens.append(token)
                s.wake()
        speedup = self.engine.args.speedup_ratio
        for rid in result.finished:
            s = streams.get(rid)
            if s is not None:
                delay = result.handoff_delay_ms.get(rid)
                if delay:
                    s.handoff_s = delay / 1000.0 / speedup
                s.done = True
                s.wake()
        for rid in result.rejected:
            s = streams.get(rid)
            if s is not None:
                s.error = errors.InvalidArgument("request can never fit this worker's KV cache")
                s.done = True
                s.wake()


class MockerEngine:
    """Simulated vLLM-style engine for one worker (all of its dp ranks)."""

    def __init__(self, args: MockEngineArgs, worker_id: int = 0, *, kv_sink: KvEventSink | None = None,
                 load_sink: LoadSink | None = None, pass_sink: PassSink | None = None,
                 bootstrap: BootstrapServer | None = None) -> None:
        args.validate()
        #: prefill workers on the bootstrap path: where decode workers wait for a request's KV
        self.bootstrap = bootstrap
        self.args = args
        self.worker_id = worker_id
        self.kv_sink = kv_sink
        self.load_sink = load_sink
        self.pass_sink = pass_sink
        self.perf_model = load_perf_model(args.planner_profile_data)
        self.ranks = [_Rank(self, r) for r in range(args.dp_size)]
        self._rr = itertools.count()
        self._ids = itertools.count()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for rank in self.ranks:
            if rank.task is None:
                rank.task = loop.create_task(rank.run(), name=f"mocker-rank-{rank.rank}")

    async def stop(self) -> None:
        for rank in self.ranks:
            if rank.task is not None:
                rank.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rank.task
                rank.task = None

    @property
    def active_requests(self) -> int:
        return sum(len(r.streams) for r in self.ranks)

    async def generate(self, request: PreprocessedRequest, ctx: RequestContext) -> AsyncIterator[LLMEngineOutput]:
        max_tokens = request.stop_conditions.max_tokens
        if max_tokens is None:
            raise errors.InvalidArgument("stop_conditions.max_tokens is required by the mocker")
        prefill_only = self.args.worker_type == "prefill"
        room = request.bootstrap_info.bootstrap_room if prefill_only and request.bootstrap_info else None
        if prefill_only:
            max_tokens = 1
            if room is not None and self.bootstrap is not None:
                self.bootstrap.expect(room)
        transferred = False
        if not prefill_only and (request.prefill_result is not None or request.bootstrap_info is not None):
            transferred = True
            if request.bootstrap_info is not None:
                transferred, why = await wait_for_kv(request.bootstrap_info)
                if not transferred:
                    logger.warning("request %s: no KV from the prefill worker (%s); computing the prompt here",
                                   ctx.id, why)
        dp_rank = request.routing.dp_rank if request.routing is not None else None
        if dp_rank is None:
            dp_rank = next(self._rr) % len(self.ranks)
        elif not 0 <= dp_rank < len(self.ranks):
            raise errors.InvalidArgument(f"dp_rank {dp_rank} out of range [0, {len(self.ranks)})")
        rank = self.ranks[dp_rank]
        rid = f"{ctx.id}-{next(self._ids)}"
        stream = _Stream()
        try:
            rank.scheduler.add_request(rid, request.token_ids, max_tokens, transferred=transferred)
        except errors.DynamoError:
            if room is not None and self.bootstrap is not None:
                self.bootstrap.complete(room, ok=False)
            raise
        rank.streams[rid] = stream
        rank.wakeup.set()
        sent = 0
        prompt_len = len(request.token_ids)
        handed_off = False
        # None: the client did not ask for logprobs; 0: only the sampled token's
        num_logprobs = request.output_options.logprobs
        try:
            while True:
                if not stream.tokens and not stream.done:
                    stream.waiter = asyncio.get_running_loop().create_future()
                    try:
                        await stream.waiter
                    finally:
                        stream.waiter = None
                if stream.error is not None:
                    raise stream.error
                if ctx.is_stopped():
                    yield LLMEngineOutput(finish_reason="cancelled")
                    return
                tokens, stream.tokens = stream.tokens, []
                out = LLMEngineOutput(token_ids=tokens)
                if num_logprobs is not None and tokens:
                    out.log_probs, out.top_logprobs = token_logprobs(tokens, sent, num_logprobs)
                sent += len(tokens)
                if stream.done:
                    cached = stream.cached_tokens
                    if request.prefill_result is not None and request.prefill_result.cached_tokens is not None:
                        cached = request.prefill_result.cached_tokens  # the prefill worker's cache hit
                    usage = CompletionUsage(prompt_tokens=prompt_len, completion_tokens=sent,
                                            total_tokens=prompt_len + sent, cached_tokens=cached)
                    params = None
                    if prefill_only:
                        if stream.handoff_s:
                            await asyncio.sleep(stream.handoff_s)  # the simulated KV transfer
                        if room is not None and self.bootstrap is not None:
                            self.bootstrap.complete(room)
                        handed_off = True
                        params = {"mocker": {"worker_id": f"{self.worker_id:x}", "prompt_tokens": prompt_len,
                                             "cached_tokens": cached}}
                    out.finish_reason = "length"
                    out.completion_usage = usage
                    out.disaggregated_params = params
                    yield out
                    return
                if tokens:
                    yield out
        finally:
            if room is not None and self.bootstrap is not None and not handed_off:
                self.bootstrap.complete(room, ok=False)  # the decode side prefills locally
            rank.streams.pop(rid, None)
            if not stream.done:
                # Cancelled or abandoned: free its blocks now, not when it would have finished.
                rank.scheduler.cancel(rid)
                rank.report_load()

