"""One model's request pipeline: preprocess → migrate → route → detokenize/stop → OpenAI chunks.

``ModelEngine`` is built per worker set (by the model manager's engine factory). The HTTP layer calls
``chat_stream``/``completion_stream``, which yield plain-dict chunks ready for orjson.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.tool_call_output import ChoiceToolCalls, check_tool_call_parser, tool_calls_for
from dynamo.kv_router.protocols import ActiveLoad
from dynamo.llm.busy import BusyMonitor, BusyThresholds
from dynamo.llm.model_manager import WorkerSet
from dynamo.llm.postprocessor.logprobs import TokenLogprobs
from dynamo.llm.postprocessor.parsers.reasoning import (
    ReasoningParser,
    check_reasoning_parser,
    reasoning_parser_for,
)
from dynamo.llm.postprocessor.stop import StepResult, StopChecker
from dynamo.llm.prefill_router import DisaggDecision, PrefillRouter
from dynamo.llm.preprocessor.request import OpenAIPreprocessor, PreprocessResult, chat_request_chars
from dynamo.llm.preprocessor.tokenizer import LONG_TEXT_CHARS
from dynamo.llm.protocols import openai as oai
from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest
from dynamo.llm.push_router import PushRouter
from dynamo.runtime import errors

logger = logging.getLogger(__name__)

#: requests bigger than this many characters (messages in any content shape, tool calls, tool
#: definitions: ``chat_request_chars``) are templated and tokenized off the event loop. The same bound
#: as the tokenizer's GIL-free path: above it a pool thread tokenizes while the loop (and the other pool
#: threads) keep running on the other cores; a 2000-token prompt took ~3 ms of loop time per request
#: when 16k chars was the bound, which capped long-prompt serving at one core.
OFFLOAD_CHARS = LONG_TEXT_CHARS
#: with this many requests in flight, every request is preprocessed on the pool (below it the thread
#: hop would only add latency)
OFFLOAD_INFLIGHT = 16
#: Preprocessing threads. The tokenizer releases the GIL while it encodes a long text (it goes through
#: the batch API for that: ``Tokenizer.encode``), so several threads tokenize long prompts on several
#: cores at once, and one long prompt no longer queues behind another. Jinja templating is pure Python and holds the GIL: offloading it adds no throughput, but
#: the loop thread gets the GIL back every switch interval (5 ms), so one huge render cannot stall
#: every other stream for its whole duration.
#: ``DYN_PREPROCESS_THREADS`` overrides the default of 4 (also on a small host: a second long prompt
#: must not wait behind the first even when there is only one core to share).
PREPROCESS_THREADS = max(int(os.environ.get("DYN_PREPROCESS_THREADS") or 4), 1)
_PREPROCESS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=PREPROCESS_THREADS,
                                                         thread_name_prefix="dynamo-preprocess")


@dataclass
class PipelineOptions:
    router_mode: str = "round-robin"
    migration_limit: int = 0
    migration_max_seq_len: int | None = None
    stream_stall_timeout: float | None = None
    busy: BusyThresholds | None = None
    kv_router: Any = None  # KvRouterConfig when router_mode == "kv"
    kv_cache_block_size: int | None = None
    enforce_disagg: bool = False
    conditional_disagg: Any = None  # ConditionalDisaggConfig


class ModelEngine:
    def __init__(self, ws: WorkerSet, preprocessor: OpenAIPreprocessor, router: Any,
                 metrics: FrontendMetrics, options: PipelineOptions) -> None:
        self.ws = ws
        self.model = ws.model
        self.preprocessor = preprocessor
        self.tokenizer = preprocessor.tokenizer
        self.router = router
        self.metrics = metrics
        self.options = options
        # A worker may ask for migration in its card; the frontend honours the larger limit.
        self.migration_limit = max(options.migration_limit, ws.card.migration_limit)
        self.monitor = BusyMonitor(options.busy)
        if hasattr(router, "busy"):
            router.busy = self.monitor.busy_workers()
        self.reasoning_parser_name = _card_reasoning_parser(ws)
        self.tool_call_parser_name = _card_tool_call_parser(ws)
        #: set by the frontend for decode worker sets: sends prefills to the namespace's prefill workers
        self.prefill: PrefillRouter | None = None

    @property
    def supports_decisions(self) -> bool:
        """Whether requests get a routing explanation (``x-dynamo-routing``)."""
        return bool(getattr(self.router, "supports_decisions", False)) or (
            self.prefill is not None and self.prefill.engaged())

    def reasoning_parser(self, req: oai.ChatCompletionRequest) -> ReasoningParser | None:
        """A fresh reasoning parser for one chat choice, or ``None`` when its output is not split."""
        return reasoning_parser_for(self.reasoning_parser_name, req.template_kwargs)

    def tool_calls(self, req: oai.ChatCompletionRequest) -> ChoiceToolCalls | None:
        """Fresh tool-call state for one chat choice, or ``None`` when its content is left as it is."""
        return tool_calls_for(self.tool_call_parser_name, req)

    def observe_load(self, load: ActiveLoad) -> None:
        rc = self.ws.runtime_configs.get(load.worker_id) or self.ws.card.runtime_config
        self.monitor.add_worker(load.worker_id, rc.total_kv_blocks, rc.max_num_batched_tokens,
                                rc.data_parallel_size)
        self.monitor.update(load.worker_id, load.dp_rank, kv_used_blocks=load.kv_used_blocks,
                            active_decode_blocks=load.active_decode_blocks,
                            active_prefill_tokens=load.active_prefill_tokens)

    @classmethod
    async def build(cls, ws: WorkerSet, metrics: FrontendMetrics, options: PipelineOptions,
                    custom_template: str | None = None) -> ModelEngine:
        pre = await asyncio.to_thread(OpenAIPreprocessor.from_card, ws.card, custom_template_path=custom_template)
        assert ws.client is not None
        router: Any
        if options.router_mode == "kv":
            from dynamo.kv_router.config import KvRouterConfig
            from dynamo.kv_router.router import KvRouter

            block_size = options.kv_cache_block_size or ws.card.kv_cache_block_size
            card_rc = ws.card.runtime_config
            router = KvRouter(ws.client, block_size, options.kv_router or KvRouterConfig(), model=ws.model,
                              eligible=lambda: ws.instances,
                              runtime_config=lambda wid: ws.runtime_configs.get(wid, card_rc)
                              if wid in ws.instances else None,
                              metrics=metrics.router_metrics())
        else:
            router = PushRouter(ws.client, options.router_mode, eligible=lambda: ws.instances)
        engine = cls(ws, pre, router, metrics, options)
        if options.router_mode == "kv":
            router.load_sink = engine.observe_load
            ns, comp, _ = ws.endpoint
            await router.start_events(ws.client.endpoint.runtime, ns, comp)
        card = ws.card
        m = card.name
        rc = card.runtime_config
        metrics.model_context_length.labels(m).set(card.context_length)
        metrics.model_kv_cache_block_size.labels(m).set(card.kv_cache_block_size)
        metrics.model_migration_limit.labels(m).set(engine.migration_limit)
        if rc.total_kv_blocks is not None:
            metrics.model_total_kv_blocks.labels(m).set(rc.total_kv_blocks)
        if rc.max_num_seqs is not None:
            metrics.model_max_num_seqs.labels(m).set(rc.max_num_seqs)
        if rc.max_num_batched_tokens is not None:
            metrics.model_max_num_batched_tokens.labels(m).set(rc.max_num_batched_tokens)
        return engine

    async def close(self) -> None:
        if self.prefill is not None:
            await self.prefill.close()
        close = getattr(self.router, "close", None)
        if close is not None:
            await close()

    # -- preprocessing ------------------------------------------------------------------------------

    def _busy(self) -> bool:
        inflight = getattr(self.router, "inflight", None)
        return bool(inflight) and sum(inflight.values()) >= OFFLOAD_INFLIGHT

    async def _offload(self, fn: Any, req: Any, request_id: str) -> Any:
        self.metrics.preprocess_offloaded.labels(self.model).inc()
        return await asyncio.get_running_loop().run_in_executor(_PREPROCESS_POOL, fn, req, request_id)

    async def preprocess_chat(self, req: oai.ChatCompletionRequest, request_id: str) -> PreprocessResult:
        t0 = time.perf_counter()
        if chat_request_chars(req) > OFFLOAD_CHARS or self._busy():
            res = await self._offload(self.preprocessor.preprocess_chat, req, request_id)
        else:
            res = self.preprocessor.preprocess_chat(req, request_id)
        self.metrics.tokenizer_latency.labels(self.model).observe((time.perf_counter() - t0) * 1000)
        return res

    async def preprocess_completion(self, req: oai.CompletionRequest, request_id: str) -> list[PreprocessResult]:
        t0 = time.perf_counter()
        prompt = req.prompt
        size = len(prompt) if isinstance(prompt, str) else 0
        if size > OFFLOAD_CHARS or self._busy() or (isinstance(prompt, list) and prompt
                                                    and isinstance(prompt[0], str)):
            res = await self._offload(self.preprocessor.preprocess_completion, req, request_id)
        else:
            res = self.preprocessor.preprocess_completion(req, request_id)
        self.metrics.tokenizer_latency.labels(self.model).observe((time.perf_counter() - t0) * 1000)
        return res

    # -- engine stream with migration ---------------------------------------------------------------

    def query_instances(self, request: PreprocessedRequest) -> dict[str, Any]:
        """Where ``request`` would go now, booking nothing: ``decode_worker_id`` and, when this model is
        disaggregated, ``prefill_worker_id`` (None for a local or aggregated prefill, with the reason)."""
        decide = getattr(self.router, "decide", None)
        lora = request.routing.lora_name if request.routing is not None else None
        if decide is not None:
            sel, _, _ = decide(request.token_ids, lora)
            out: dict[str, Any] = {"decode_worker_id": sel.worker_id, "dp_rank": sel.dp_rank,
                                   "overlap_blocks": sel.overlap_blocks}
        else:
            out = {"decode_worker_id": self.router.select()}
        if self.prefill is not None and self.prefill.engaged():
            out.update(self.prefill.query(request, self.router))
        return out

    async def _dispatch(self, request: PreprocessedRequest, headers: dict[str, str] | None,
                        instance_id: int | None, on_decision: Any, prefill_instance_id: int | None,
                        ) -> tuple[int, Any]:
        """Route one attempt: its prefill first when this model is disaggregated, then the decode."""
        if self.prefill is None or not self.prefill.engaged():
            if on_decision is not None:
                return await self.router.generate(request, headers, instance_id, on_decision=on_decision)
            return await self.router.generate(request, headers, instance_id)
        decode_req, outcome = await self.prefill.route(request, headers, self.router, prefill_instance_id)
        seen: list[Any] = []
        if getattr(self.router, "supports_decisions", False):
            iid, stream = await self.router.generate(decode_req, headers, instance_id, on_decision=seen.append)
        else:
            iid, stream = await self.router.generate(decode_req, headers, instance_id)
        if on_decision is not None:
            on_decision(DisaggDecision(outcome, iid, seen[-1] if seen else None))
        return iid, stream

    async def engine_stream(self, request: PreprocessedRequest, instance_id: int | None = None,
                            on_decision: Any = None, on_instance: Callable[[int], None] | None = None,
                            prefill_instance_id: int | None = None) -> AsyncIterator[LLMEngineOutput]:
        """Stream engine outputs, re-issuing the request on another worker if its worker is lost.

        On a mid-stream failure the tokens generated so far are appended to the prompt and
        ``max_tokens`` is reduced, so the client sees one continuous stream.
        """
        retries = self.migration_limit
        if request.sampling_options.guided_decoding:
            retries = 0
        headers = {"request-id": request.request_id} if request.request_id else None
        current = request
        copied = False
        # Until the client has seen output, a lost worker costs nothing: the retry is a new request.
        streamed = False
        stall = self.options.stream_stall_timeout
        while True:
            try:
                iid, stream = await self._dispatch(current, headers, instance_id, on_decision, prefill_instance_id)
                if on_instance is not None:
                    on_instance(iid)
            except errors.DynamoError as exc:
                if exc.migratable and retries > 0 and instance_id is None:
                    retries -= 1
                    self.metrics.migrations.labels(self.model, "new_request").inc()
                    logger.warning("request %s: %s; retrying on another worker", request.request_id, exc)
                    continue
                raise
            try:
                it = stream.__aiter__()
                while True:
                    try:
                        if stall is not None:
                            out = await asyncio.wait_for(it.__anext__(), stall)
                        else:
                            out = await it.__anext__()
                    except StopAsyncIteration:
                        return
                    except asyncio.TimeoutError:
                        raise errors.StreamStalled(f"no output for {stall}s") from None
                    if out.token_ids and retries > 0:
                        if not copied:
                            current = msgspec.structs.replace(
                                current, token_ids=list(current.token_ids),
                                stop_conditions=msgspec.structs.replace(current.stop_conditions))
                            copied = True
                        current.token_ids.extend(out.token_ids)
                        sc = current.stop_conditions
                        if sc.max_tokens is not None:
                            sc.max_tokens -= len(out.token_ids)
                    streamed = True
                    yield out
            except errors.DynamoError as exc:
                if not exc.migratable or retries <= 0 or instance_id is not None:
                    raise
                max_len = self.options.migration_max_seq_len
                if max_len is not None and len(current.token_ids) > max_len:
                    self.metrics.migration_seq_len_exceeded.labels(self.model).inc()
                    raise
                if isinstance(exc, (errors.StreamStalled, errors.EngineShutdown)):
                    # A stalled worker still holds its connection, and a worker whose engine is gone may
                    # still be registered for a moment: take it out of rotation now, or the retry (which
                    # has the best cache overlap there) would go straight back to it.
                    report_down = getattr(getattr(self.router, "client", None), "report_instance_down", None)
                    if report_down is not None:
                        report_down(iid)
                retries -= 1
                kind = "ongoing_request" if streamed else "new_request"
                self.metrics.migrations.labels(self.model, kind).inc()
                logger.warning("request %s: worker lost (%s); migrating (%s) with %d tokens",
                               request.request_id, exc, kind, len(current.token_ids))
            finally:
                await stream.aclose()

    async def choice_stream(self, pre: PreprocessResult, instance_id: int | None = None,
                            on_decision: Any = None, on_instance: Callable[[int], None] | None = None,
                            prefill_instance_id: int | None = None,
                            on_explain: Callable[[dict[str, Any]], None] | None = None,
                            ) -> AsyncIterator[StepResult]:
        """Detokenized, stop-checked results for one choice; the last one carries ``finish_reason``.
        ``on_instance`` is told each worker instance the choice is dispatched to; ``on_explain`` each
        routing explanation a worker returns (``extra_args["routing"]``, e.g. the global router's pools)."""
        checker = StopChecker.for_request(self.tokenizer, pre.request)
        stream = self.engine_stream(pre.request, instance_id, on_decision, on_instance, prefill_instance_id)
        try:
            async for out in stream:
                if on_explain is not None and out.extra_args:
                    explained = out.extra_args.get("routing")
                    if isinstance(explained, dict):
                        on_explain(explained)
                res = checker.process_output(out)
                if res.finish_reason is None and out.finish_reason is not None:
                    res.finish_reason = out.finish_reason
                if out.log_probs is not None:
                    res.logprobs = TokenLogprobs.accepted(out, res.num_tokens)
                usage = out.completion_usage
                if usage is not None and usage.cached_tokens is not None:
                    res.cached_tokens = usage.cached_tokens
                yield res
                if res.finish_reason is not None:
                    return
            if not checker.finished:
                # The engine ended its stream without saying why: treat it as complete.
                yield StepResult("", 0, finish_reason="stop")
        finally:
            await stream.aclose()

    @staticmethod
    def completion_tokens(results: list[StepResult]) -> int:
        return sum(r.num_tokens for r in results)


def _card_reasoning_parser(ws: WorkerSet) -> str | None:
    """The worker card's reasoning parser name (``--dyn-reasoning-parser`` on the worker). A name this
    frontend does not know is logged and ignored: the model still serves, unsplit."""
    name = ws.card.runtime_config.reasoning_parser
    try:
        check_reasoning_parser(name)
    except errors.ConfigError as exc:
        logger.warning("model %s: %s; reasoning is not split", ws.model, exc)
        return None
    return name or None


def _card_tool_call_parser(ws: WorkerSet) -> str | None:
    """The worker card's tool-call parser name (``--dyn-tool-call-parser`` on the worker); an unknown
    one is logged and ignored: tool calls then stay content."""
    name = ws.card.runtime_config.tool_call_parser
    try:
        check_tool_call_parser(name)
    except errors.ConfigError as exc:
        logger.warning("model %s: %s; tool calls are not parsed", ws.model, exc)
        return None
    return name or None


async def merge_streams(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave several async iterators, yielding ``(index, item)`` as items arrive."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(i: int, s: AsyncIterator[Any]) -> None:
        try:
            async for item in s:
                await queue.put((i, item, None, False))
        except BaseException as exc:
            await queue.put((i, None, exc, True))
            return
        await queue.put((i, None, None, True))

    tasks = [asyncio.get_running_loop().create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item, exc, done = await queue.get()
            if done:
                remaining -= 1
                if exc is not None and not isinstance(exc, asyncio.CancelledError):
                    raise exc
                continue
            yield i, item
    finally:
        # Wait for the cancelled pumps: a pump still inside its stream's ``__anext__`` makes the caller's
        # ``aclose()`` of that stream fail with "asynchronous generator is already running".
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
