"""Trace replay in simulated time: the mocker's scheduler/KV manager per worker plus a routing policy.

The clock is event-driven: a heap of *arrivals* and *pass ends*, popped in time order. A worker runs
one scheduling pass (:meth:`Scheduler.step`) when it is idle and has work, or right when its previous
pass ends; the pass's tokens are delivered at ``start + duration``. An idle worker costs nothing: the
clock jumps straight to the next event, so an hour of sparse traffic is not simulated pass by pass.

What the router sees follows a live deployment: KV events when the pass that caused them starts
(the mocker publishes them at pass start), prefill completion at a request's first token, the free at
its last. At equal times pass ends go before arrivals (a request arriving as another finishes sees
the freed load), an idle worker given work starts its pass only after every arrival of that instant
(simultaneous requests share the first pass), and ties within a kind keep insertion order, so a replay
is deterministic under its seed. No asyncio, no sockets, no wall clock.

With a planner (:mod:`dynamo.replay.planner`), its steps are events too (after everything else of their
instant; they bound decode spans, so a step has the forward passes that ended before it, give or take a
span's last pass, which may end just after): workers it
adds start serving after ``worker_startup_ms``; workers it removes are drained (the router stops
sending them requests and drops their blocks at once; they leave when idle).
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dynamo.kv_router.config import KvRouterConfig
from dynamo.kv_router.protocols import RouterEvent
from dynamo.llm.forward_pass import ForwardPassWindow
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.perf_model import load_perf_model
from dynamo.mocker.scheduler import Scheduler
from dynamo.replay.routing import KvRoutingPolicy, RouteDecision, make_policy
from dynamo.replay.workload import PromptBuilder, TraceRequest
from dynamo.runtime.errors import InvalidArgument

if TYPE_CHECKING:
    # The planner (httpx, prometheus_client, scipy) is imported only by a replay that runs it.
    from dynamo.planner.args import PlannerConfig
    from dynamo.planner.core import Planner
    from dynamo.planner.perf_interpolation import PerfProfile
    from dynamo.replay.planner import FleetTimeline, FrontendCounters

_PASS_END = 0
_ARRIVAL = 1
_WAKE = 2  # an idle worker got work: its pass starts after every arrival of the same instant
_WORKER_UP = 3  # a worker the planner started has finished starting
_PLANNER = 4  # a planner step (payload: _THROUGHPUT or _LOAD), after everything else of its instant
_THROUGHPUT = 0
_LOAD = 1

# worker states (the planner's scale-up/down)
_SERVING = 0
_STARTING = 1
_DRAINING = 2
_GONE = 3


@dataclass(slots=True)
class RequestRecord:
    """The life of one request in simulated milliseconds (what the report is computed from)."""

    index: int
    arrival_ms: float
    input_length: int
    output_length: int
    worker: int = -1
    predicted_cached_tokens: int = 0
    #: the most cached prefix any worker had when this request was routed (tokens)
    best_cached_tokens: int = 0
    #: cached prompt tokens at its first admission (``reused_input_tokens``)
    reused_tokens: int = -1
    admissions: int = 0
    reused_all_admissions: int = 0
    first_token_ms: float | None = None
    second_token_ms: float | None = None
    last_token_ms: float | None = None
    tokens: int = 0
    status: str = "pending"  # pending | completed | rejected

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_ms is None else self.first_token_ms - self.arrival_ms

    @property
    def e2e_ms(self) -> float | None:
        return None if self.last_token_ms is None else self.last_token_ms - self.arrival_ms


@dataclass(slots=True)
class ReplayResult:
    records: list[RequestRecord]
    #: every inter-token gap of every request, in ms (the ITL distribution)
    itl_ms: array = field(default_factory=lambda: array("d"))
    duration_ms: float = 0.0
    num_passes: int = 0
    num_preemptions: int = 0
    #: workers at the start (the whole run without a planner)
    num_workers: int = 1
    #: with a planner: workers over time (None without one)
    fleet: FleetTimeline | None = None


class _SpanEnd:
    """The result a decode span leaves for its end: requests that emitted their last token in its last
    pass (shaped like the ``PassResult`` fields the run loop reads)."""

    __slots__ = ("finished",)
    rejected = ()

    def __init__(self, finished: list[str]) -> None:
        self.finished = finished


class _Worker:
    __slots__ = ("busy", "fpm", "index", "pass_result", "sched", "state")

    def __init__(self, index: int, sched: Scheduler, state: int = _SERVING) -> None:
        self.index = index
        self.sched = sched
        self.busy = False
        self.pass_result = None
        self.state = state
        #: forward-pass reports for the planner's load-based scaler (None without it)
        self.fpm: ForwardPassWindow | None = None


class ReplaySimulation:
    """One replay of ``requests`` over ``num_workers`` mocker workers (see the module docstring)."""

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        *,
        engine_args: MockEngineArgs | None = None,
        num_workers: int = 1,
        router_mode: str = "round_robin",
        router_config: KvRouterConfig | None = None,
        trace_block_size: int = 512,
        arrival_speedup_ratio: float = 1.0,
        replay_concurrency: int | None = None,
        seed: int = 0,
        fast_forward: bool = True,
        planner: PlannerConfig | None = None,
        planner_perf: PerfProfile | None = None,
        worker_startup_ms: float = 2000.0,
    ) -> None:
        if num_workers < 1:
            raise InvalidArgument("--num-workers must be >= 1")
        if not arrival_speedup_ratio > 0:
            raise InvalidArgument("--arrival-speedup-ratio must be > 0")
        if replay_concurrency is not None and replay_concurrency < 1:
            raise InvalidArgument("--replay-concurrency must be >= 1")
        args = engine_args or MockEngineArgs()
        args.validate()
        self.args = args
        self.requests = list(requests)
        self.replay_concurrency = replay_concurrency
        self.speedup = arrival_speedup_ratio
        self.prompts = PromptBuilder(trace_block_size, args.block_size)
        self.policy = make_policy(router_mode, num_workers, args.block_size, args.max_num_batched_tokens,
                                  router_config, seed)
        self._perf = load_perf_model(args.planner_profile_data)
        self._seed = seed
        self.workers: list[_Worker] = []
        for _ in range(num_workers):
            self._new_worker(_SERVING)
        self.records = [RequestRecord(i, 0.0, r.input_length, r.output_length)
                        for i, r in enumerate(self.requests)]
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._pending: dict[str, tuple[list[int], tuple[list[int], list[int]]]] = {}
        self.itl = array("d")
        self.num_passes = 0
        self.fast_forward = fast_forward
        #: open-loop arrival times in order, and how many have arrived (the decode-span horizon)
        self._arrival_times: list[float] = []
        self._arrived = 0
        #: arrivals are created while replaying (closed loop, multi-turn sessions)
        self._dynamic_arrivals = replay_concurrency is not None
        self._num_done = 0
        self.num_workers = num_workers
        self.planner: Planner | None = None
        self.fleet: FleetTimeline | None = None
        self._counters: FrontendCounters | None = None
        self._next_tick = math.inf
        if planner is not None:
            self._setup_planner(planner, planner_perf, worker_startup_ms)

    def _new_worker(self, state: int) -> _Worker:
        w = len(self.workers)
        sched = Scheduler(self.args, worker_id=w, event_sink=self._sink, perf_model=self._perf,
                          seed=self._seed * 1_000_003 + w)
        worker = _Worker(w, sched, state)
        self.workers.append(worker)
        return worker

    def _sink(self, event: RouterEvent) -> None:
        self.policy.on_event(event)

    def _push(self, t: float, kind: int, payload: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, payload))

    # ------------------------------------------------------------------------------------- arrivals

    def _schedule_arrivals(self) -> None:
        reqs = self.requests
        if self.replay_concurrency is not None:
            # Closed loop: the trace's order, ``replay_concurrency`` in flight, timestamps ignored.
            self._next_closed = min(self.replay_concurrency, len(reqs))
            for i in range(self._next_closed):
                self._push(0.0, _ARRIVAL, i)
            return
        self._session_next: dict[int, int] = {}
        t0 = min((r.arrival_ms for r in reqs), default=0.0)
        last_of_session: dict[str, int] = {}
        for i, r in enumerate(reqs):
            prev = last_of_session.get(r.session_id) if r.session_id is not None else None
            if r.session_id is not None:
                last_of_session[r.session_id] = i
            if prev is not None and r.delay_ms is not None:
                self._session_next[prev] = i  # arrives ``delay`` after ``prev`` finishes
                self._dynamic_arrivals = True
                continue
            t = (r.arrival_ms - t0) / self.speedup
            self._arrival_times.append(t)
            self._push(t, _ARRIVAL, i)
        self._arrival_times.sort()

    def _on_done(self, index: int, now: float) -> None:
        self._num_done += 1
        if self.replay_concurrency is not None:
            if self._next_closed < len(self.requests):
                self._push(now, _ARRIVAL, self._next_closed)
                self._next_closed += 1
            return
        nxt = self._session_next.pop(index, None)
        if nxt is not None:
            self._push(now + (self.requests[nxt].delay_ms or 0.0) / self.speedup, _ARRIVAL, nxt)

    def _arrive(self, index: int, now: float) -> None:
        self._arrived += 1
        rec = self.records[index]
        rec.arrival_ms = now
        tokens, hashes = self.prompts.build(self.requests[index])
        rid = str(index)
        decision = self.policy.route(rid, len(tokens), hashes[0], hashes[1], now)
        if decision is None:
            self._pending[rid] = (tokens, hashes)  # queued by the router until a worker has room
            return
        self._dispatch(index, tokens, hashes, decision, now)

    def _dispatch(self, index: int, tokens: list[int], hashes: tuple[list[int], list[int]],
                  decision: RouteDecision, now: float) -> None:
        rec = self.records[index]
        w = decision.worker
        rec.worker = w
        rec.predicted_cached_tokens = decision.overlap_blocks * self.args.block_size
        rec.best_cached_tokens = decision.best_overlap_blocks * self.args.block_size
        worker = self.workers[w]
        try:
            worker.sched.add_request(str(index), tokens, self.requests[index].output_length, block_hashes=hashes)
        except InvalidArgument:
            rec.status = "rejected"
            self.policy.on_finished(str(index))
            self._on_done(index, now)
            return
        if not worker.busy:
            # Not at once: requests arriving at this same instant must make the same first pass.
            worker.busy = True
            self._push(now, _WAKE, w)

    def _release_queued(self, now: float) -> None:
        policy = self.policy
        if not isinstance(policy, KvRoutingPolicy):
            return
        while self._pending:
            ready = policy.release_waiting(now)
            if not ready:
                return
            for rid in ready:
                tokens, hashes = self._pending.pop(rid)
                decision = policy.route(rid, len(tokens), hashes[0], hashes[1], now, from_queue=True)
                assert decision is not None
                self._dispatch(int(rid), tokens, hashes, decision, now)

    # ------------------------------------------------------------------------------------- passes

    def _horizon(self) -> float:
        """Until when nothing from outside can reach an idle-looking worker: the next arrival.

        With arrivals created on the fly (closed loop, sessions) or requests parked in the router's
        queue (released by other workers' completions), the next event of any kind bounds it instead.
        """
        if self._dynamic_arrivals or self._pending:
            return self._heap[0][0] if self._heap else math.inf
        times = self._arrival_times
        nxt = times[self._arrived] if self._arrived < len(times) else math.inf
        # A planner step reads every worker's forward passes and may drain this one.
        return nxt if nxt < self._next_tick else self._next_tick

    def _start_pass(self, worker: _Worker, now: float) -> None:
        if self.fast_forward:
            horizon = self._horizon()
            if horizon > now:
                sched = worker.sched
                ids = sched.running_ids()
                blocks = [] if worker.fpm is not None else None
                finished: list[str] = []
                durations = sched.step_decode_span(horizon - now, blocks_out=blocks, finished_out=finished)
                if durations:
                    end = self._record_span(worker, now, durations, blocks, ids, len(finished))
                    self._push(end, _PASS_END, worker.index)
                    worker.busy = True
                    worker.pass_result = _SpanEnd(finished) if finished else None
                    return
        res = worker.sched.step()
        self.num_passes += 1
        records = self.records
        for rid, cached in res.admitted:
            rec = records[int(rid)]
            rec.admissions += 1
            rec.reused_all_admissions += cached
            if rec.reused_tokens < 0:
                rec.reused_tokens = cached
        for rid in res.rejected:
            records[int(rid)].status = "rejected"
            self.policy.on_finished(rid)
            self._on_done(int(rid), now)
        if res.duration_ms <= 0.0 and not res.emitted:
            worker.busy = False  # nothing could run; the next arrival wakes the worker
            return
        worker.busy = True
        worker.pass_result = res
        self._push(now + res.duration_ms, _PASS_END, worker.index)

    def _record_span(self, worker: _Worker, now: float, durations: list[float], blocks: list[int] | None,
                     ids: list[str], num_finished: int) -> float:
        """Book the tokens of a decode span (every running request, one per pass); returns its end.

        Nothing in a span is visible to the router but the KV events of its passes, which the mocker
        publishes at pass start: every pass of a span starts before the horizon, the next moment the
        router decides anything, so booking the span ahead of the clock changes no decision. Pass end
        times are summed one pass at a time, as the event loop would, so they match the pass-by-pass
        replay exactly.
        """
        self.num_passes += len(durations)
        # Pass ends, summed one pass at a time as the event loop would.
        first = now + durations[0]
        itl = self.itl
        records = self.records
        n = len(ids)
        prev = first
        t = first
        for d in durations[1:]:
            t += d
            # every running request waited this gap for its token
            if n == 1:
                itl.append(t - prev)
            else:
                itl.extend([t - prev] * n)
            prev = t
        for rid in ids:
            rec = records[int(rid)]
            itl.append(first - rec.last_token_ms)
            if rec.tokens == 1:
                rec.second_token_ms = first
            rec.last_token_ms = t
            rec.tokens += len(durations)
        fpm = worker.fpm
        if fpm is not None and blocks is not None:
            # One report per pass, as the mocker publishes them.
            scale = self.args.speedup_ratio * self.args.decode_speedup_ratio
            t = now
            last = len(durations) - 1
            for i, (d, used) in enumerate(zip(durations, blocks, strict=True)):
                t += d
                report = fpm.add(0, t / 1000.0, num_running=n - num_finished if i == last else n, num_waiting=0,
                                 kv_used_blocks=used, scheduled_tokens=n, emitted_tokens=n, decode_ms=d * scale)
                if report is not None:
                    self._observe_fpm(report)
        return prev

    def _end_pass(self, worker: _Worker, now: float) -> None:
        res = worker.pass_result
        worker.pass_result = None
        if res is None:  # the end of a decode span: its tokens are already booked
            self._start_pass(worker, now)
            return
        if type(res) is _SpanEnd:  # ... and in its last pass these requests emitted their last token
            self._complete(worker, res.finished, now)
            return
        records = self.records
        itl = self.itl
        policy = self.policy
        counters = self._counters
        if worker.fpm is not None:
            report = worker.fpm.add(0, now / 1000.0, num_running=res.num_running, num_waiting=res.num_waiting,
                                    kv_used_blocks=res.active_blocks, scheduled_tokens=res.num_scheduled_tokens,
                                    emitted_tokens=len(res.emitted), prefill_ms=res.prefill_ms,
                                    decode_ms=res.decode_ms, preempted=len(res.preempted))
            if report is not None:
                self._observe_fpm(report)
        for rid, _token in res.emitted:
            rec = records[int(rid)]
            n = rec.tokens
            if n == 0:
                rec.first_token_ms = now
                policy.on_first_token(rid)
                if counters is not None:
                    counters.first_token((now - rec.arrival_ms) / 1000.0)
            else:
                if n == 1:
                    rec.second_token_ms = now
                itl.append(now - rec.last_token_ms)
            rec.last_token_ms = now
            rec.tokens = n + 1
        self._complete(worker, res.finished, now)

    def _complete(self, worker: _Worker, finished: list[str], now: float) -> None:
        """A pass of ``worker`` ended at ``now`` with ``finished`` done: tell the router, count them,
        and start the worker's next pass (or retire a drained worker that went idle)."""
        records = self.records
        policy = self.policy
        counters = self._counters
        for rid in finished:
            idx = int(rid)
            rec = records[idx]
            rec.status = "completed"
            policy.on_finished(rid)
            if counters is not None:
                counters.completed(rec.input_length, rec.tokens, rec.first_token_ms / 1000.0, now / 1000.0,
                                   (now - rec.arrival_ms) / 1000.0)
            self._on_done(idx, now)
        if finished:
            self._release_queued(now)
        if worker.sched.is_idle:
            worker.busy = False
            if worker.state == _DRAINING:
                self._retire(worker, now)
        else:
            self._start_pass(worker, now)

    # ------------------------------------------------------------------------------------- planner

    def _setup_planner(self, config: PlannerConfig, perf: PerfProfile | None, startup_ms: float) -> None:
        if startup_ms < 0:
            raise InvalidArgument("--worker-startup-delay must be >= 0")
        if config.min_endpoint < 1:
            raise InvalidArgument("a replay's planner needs --min-endpoint >= 1 (requests need a worker)")
        if config.enable_throughput_scaling and perf is None:
            raise InvalidArgument("throughput scaling needs the profile (--profile-results-dir)")
        from dynamo.planner.core import Planner
        from dynamo.replay.planner import FleetTimeline, FrontendCounters, ReplayConnector, ReplayTraffic

        self._startup_ms = startup_ms
        self._counters = FrontendCounters()
        self.fleet = FleetTimeline()
        #: serving and starting workers, oldest first (scale-down drains the newest, as ``local`` does)
        self._provisioned = [w.index for w in self.workers]
        self._num_starting = 0
        self._num_draining = 0
        connector = ReplayConnector(lambda: len(self._provisioned), self._resize,
                                    lambda: self._num_starting == 0 and self._num_draining == 0)
        traffic = ReplayTraffic(self._counters) if config.enable_throughput_scaling else None
        load_traffic = (ReplayTraffic(self._counters)
                        if config.enable_loadbased_scaling and not config.no_correction else None)
        self.planner = Planner(config, connector, traffic, perf if config.enable_throughput_scaling else None,
                               load_traffic=load_traffic)
        if config.load_predictor_warmup_trace:
            from dynamo.planner.warmup import bucket, read_trace

            self.planner.warm_start(bucket(read_trace(config.load_predictor_warmup_trace), config.adjustment_interval))
        if config.enable_loadbased_scaling:
            for w in self.workers:
                w.fpm = ForwardPassWindow(w.index)
        self._now = 0.0
        self._ticks: dict[int, float] = {}

    def _record_fleet(self, now: float) -> None:
        assert self.fleet is not None
        self.fleet.record(now, len(self._provisioned) - self._num_starting, self._num_starting, self._num_draining)

    def _serving_ids(self) -> set[int]:
        return {w for w in self._provisioned if self.workers[w].state == _SERVING}

    def _observe_fpm(self, report: dict[str, Any]) -> None:
        assert self.planner is not None
        # Only registered workers' reports count (a draining one has left discovery), as live.
        if self.workers[report["worker_id"]].state == _SERVING:
            self.planner.observe_fpm("decode", report)  # agg workers are the planner's decode pool

    def _resize(self, target: int) -> None:
        """The connector's ``set_component_replicas``: start or drain workers until ``target`` are
        provisioned (serving or starting)."""
        now = self._now
        assert self.fleet is not None and self.planner is not None
        while len(self._provisioned) < target:
            worker = self._new_worker(_STARTING)
            if self.planner.config.enable_loadbased_scaling:
                worker.fpm = ForwardPassWindow(worker.index)
            self._provisioned.append(worker.index)
            self._num_starting += 1
            self.fleet.scale_ups += 1
            self._push(now + self._startup_ms, _WORKER_UP, worker.index)
        while len(self._provisioned) > max(target, 1):
            worker = self.workers[self._provisioned.pop()]
            self.fleet.scale_downs += 1
            if worker.state == _STARTING:
                self._num_starting -= 1
                worker.state = _GONE  # never came up: its _WORKER_UP is ignored
                continue
            worker.state = _DRAINING
            self._num_draining += 1
            self.policy.drain_worker(worker.index)
            self.planner.forget_workers("decode", self._serving_ids())
            if worker.sched.is_idle and not worker.busy:
                self._retire(worker, now)
        self._record_fleet(now)

    def _worker_up(self, worker: _Worker, now: float) -> None:
        if worker.state != _STARTING:
            return
        worker.state = _SERVING
        self._num_starting -= 1
        self.policy.add_worker(worker.index)
        self._record_fleet(now)
        if self._pending:
            self._release_queued(now)

    def _retire(self, worker: _Worker, now: float) -> None:
        worker.state = _GONE
        self._num_draining -= 1
        self.policy.remove_worker(worker.index)
        self._record_fleet(now)

    def _planner_step(self, which: int, now: float) -> None:
        from dynamo.replay.planner import run_step

        planner = self.planner
        assert planner is not None
        self._now = now
        c = planner.config
        if which == _THROUGHPUT:
            run_step(planner.throughput_step())
            interval = c.adjustment_interval
        else:
            run_step(planner.load_step(now / 1000.0))
            interval = c.loadbased_adjustment_interval
        if self._num_done < len(self.requests):
            self._schedule_tick(which, now + interval * 1000.0)

    def _schedule_tick(self, which: int, t: float) -> None:
        self._push(t, _PLANNER, which)
        self._ticks[which] = t
        # the earliest pending step bounds decode spans (see _horizon)
        self._next_tick = min(self._ticks.values())

    # ------------------------------------------------------------------------------------- run

    def run(self, progress: Callable[[int], None] | None = None) -> ReplayResult:
        """Replay every request to completion; ``progress(n)`` is called with each finished count."""
        self._schedule_arrivals()
        if self.planner is not None:
            c = self.planner.config
            self._record_fleet(0.0)
            if c.enable_throughput_scaling:
                self._schedule_tick(_THROUGHPUT, c.adjustment_interval * 1000.0)
            if c.enable_loadbased_scaling:
                self._schedule_tick(_LOAD, c.loadbased_adjustment_interval * 1000.0)
        heap = self._heap
        pop = heapq.heappop
        workers = self.workers
        done = 0
        now = end = 0.0
        while heap:
            now, kind, _seq, payload = pop(heap)
            if kind == _WAKE:
                self._start_pass(workers[payload], now)
            elif kind == _PASS_END:
                worker = workers[payload]
                res = worker.pass_result
                before = 0 if res is None else len(res.finished) + len(res.rejected)
                self._end_pass(worker, now)
                if progress is not None and before:
                    done += before
                    progress(done)
            elif kind == _ARRIVAL:
                self._arrive(payload, now)
            elif kind == _WORKER_UP:
                self._worker_up(workers[payload], now)
            else:
                # A step left over once every request is done neither runs nor ends the replay later.
                if self._num_done < len(self.requests):
                    self._planner_step(payload, now)
                continue
            end = now
        preemptions = sum(w.sched.num_preemptions for w in workers)
        return ReplayResult(self.records, self.itl, end, self.num_passes, preemptions, self.num_workers, self.fleet)
