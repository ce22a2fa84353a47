"""KvRouter: KV-cache-aware routing of one model's requests (reference §2.3–2.9).

Joins the pure pieces — block hashing, the radix-tree indexer (fed by workers' ``kv-events``, or by
its own decisions in approximate mode), active-sequence tracking and the cost-based selector — with
the runtime: it books each request on the chosen (worker, dp_rank), frees it when the stream ends,
and offers the same ``generate`` interface as the non-KV ``PushRouter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from dynamo.kv_router.approx import ApproxKvIndexer
from dynamo.kv_router.config import KvRouterConfig
from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.indexer import OverlapScores, RadixTree
from dynamo.kv_router.metrics import RouterMetrics
from dynamo.kv_router.protocols import ActiveLoad, RouterEvent, decode_router_event
from dynamo.kv_router.queue import PendingQueue, QueuePolicy, priority_key, should_queue
from dynamo.kv_router.recovery import KV_DUMP_ENDPOINT, newer_than, parse_dump
from dynamo.kv_router.selector import Selection, WorkerSelector
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker, PotentialLoad
from dynamo.llm.protocols.engine import PreprocessedRequest, RoutingHints
from dynamo.llm.protocols.model_card import RuntimeConfig
from dynamo.runtime import errors
from dynamo.runtime.client import Client
from dynamo.runtime.tasks import supervise

logger = logging.getLogger(__name__)

WorkerKey = tuple[int, int]

#: how long a router waits for a new worker's ``kv_dump`` endpoint to appear in discovery
DUMP_WAIT_SECS = 5.0


class AddRequest(msgspec.Struct, tag=True):
    token_sequence: list[int] | None
    isl: int
    overlap: int
    expected_output_tokens: int | None = None


class ActiveSequenceEvent(msgspec.Struct):
    """One replica's booking change, shared on ``active_sequences_events`` (``--router-replica-sync``)."""

    request_id: str
    worker_id: int
    dp_rank: int
    router_id: int
    data: AddRequest | str  # or "MarkPrefillCompleted" / "Free"


@dataclass(slots=True)
class RoutingDecision:
    """Why a request went where it did: exposed to clients in the ``x-dynamo-routing`` header."""

    selection: Selection
    isl_blocks: int

    def to_dict(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "worker_id": sel.worker_id,
            "dp_rank": sel.dp_rank,
            "overlap_blocks": sel.overlap_blocks,
            "prompt_blocks": self.isl_blocks,
            "candidates": [
                {"worker_id": c.worker_id, "dp_rank": c.dp_rank, "overlap_blocks": c.overlap_blocks,
                 "prefill_blocks": round(c.prefill_blocks, 3), "decode_blocks": c.decode_blocks,
                 "logit": round(c.logit, 3), "tree_size": c.tree_size}
                for c in sel.candidates
            ],
        }


class KvRouter:
    #: ``generate`` accepts ``on_decision`` (the frontend then reports the decision to the client)
    supports_decisions = True

    def __init__(
        self,
        client: Client,
        block_size: int,
        config: KvRouterConfig | None = None,
        *,
        model: str = "",
        eligible: Callable[[], set[int]] | None = None,
        runtime_config: Callable[[int], RuntimeConfig | None] | None = None,
        metrics: RouterMetrics | None = None,
        rng: random.Random | None = None,
        load_sink: Callable[[ActiveLoad], None] | None = None,
    ) -> None:
        self.config = (config or KvRouterConfig()).validate()
        if block_size <= 0:
            raise errors.ConfigError("KV router needs a positive block size")
        self.client = client
        self.block_size = block_size
        self.model = model
        self._eligible = eligible
        self._runtime_config = runtime_config or (lambda _wid: RuntimeConfig())
        self.metrics = metrics or RouterMetrics()
        self.rng = rng or random.Random()
        self.load_sink = load_sink
        cfg = self.config
        self.approx: ApproxKvIndexer | None = None
        if cfg.use_kv_events:
            self.indexer = RadixTree()
        else:
            self.approx = ApproxKvIndexer(cfg.router_ttl_secs, cfg.router_max_tree_size,
                                          cfg.router_prune_target_ratio, clock=time.monotonic)
            self.indexer = self.approx.tree
        self.sequences = ActiveSequencesMultiWorker(
            block_size,
            track_active_blocks=cfg.router_track_active_blocks,
            track_output_blocks=cfg.router_track_output_blocks,
            assume_kv_reuse=cfg.router_assume_kv_reuse,
            track_prefill_tokens=cfg.router_track_prefill_tokens,
            rng=self.rng,
        )
        self.selector = WorkerSelector(self.rng)
        self.busy: set[int] = set()
        self.inflight: dict[int, int] = {}
        self._ids = itertools.count()
        self._subscriber: Any = None
        self._durable: Any = None
        self._event_task: asyncio.Task[None] | None = None
        self.router_id = self.rng.getrandbits(63)
        self._sync_pub: Any = None
        self._sync_sub: Any = None
        self._sync_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._dump_client: Client | None = None
        self._recovering: dict[int, list[RouterEvent]] = {}
        self._queue: PendingQueue[asyncio.Future[None]] = PendingQueue()
        self._queue_t0 = time.monotonic()
        # Workers whose instance record is live. KV events from any other id are dropped: a draining
        # worker keeps publishing after its key is gone, and indexing those events would re-create a
        # worker nothing removes again (one leaked index entry per graceful restart). Events from a
        # worker not yet seen are not lost for good: its first sighting rebuilds it from its snapshot.
        self._live: set[int] = set(client.instance_ids())
        # dp ranks with per-worker metric series, so a removed worker's series can be dropped
        self._labelled: dict[int, set[int]] = {}
        client.on_change(self._on_instance_change)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start_events(self, runtime: Any, namespace: str, component: str) -> None:
        """Subscribe to the workers' ``kv-events`` (unless approximate mode or weight 0), and join the
        other router replicas' ``active_sequences_events`` with ``--router-replica-sync``."""
        if self.config.router_replica_sync:
            comp = runtime.namespace(namespace).component(component)
            self._sync_pub = await comp.event_publisher("active_sequences_events", publisher_id=self.router_id)
            self._sync_sub = await comp.subscribe("active_sequences_events")
            self._sync_task = supervise("kv-router replica-sync consumer",
                                        lambda: self._consume_sync(self._sync_sub)).task
        if not self.config.should_subscribe_to_kv_events:
            return
        if self.config.durable_kv_events:
            # The stream (and the newest snapshot) is the whole history: no worker dumps, no gaps.
            from dynamo.kv_router.durable import DurableKvConsumer

            self._durable = await DurableKvConsumer.start(self, runtime, namespace, component)
            return
        comp = runtime.namespace(namespace).component(component)
        sub = await comp.subscribe("kv-events")
        sub.on_gap = self._on_gap
        self._subscriber = sub
        self._event_task = supervise("kv-router kv-events consumer", lambda: self._consume(sub)).task
        self._dump_client = await comp.endpoint(KV_DUMP_ENDPOINT).client()
        # Workers already running hold blocks whose events we never saw: start from their snapshots.
        for wid in self.client.instance_ids():
            self._schedule_recovery(wid, "initial")

    async def close(self) -> None:
        for task in (self._sync_task, *self._bg):
            if task is not None:
                task.cancel()
        for obj in (self._sync_sub, self._sync_pub):
            if obj is not None:
                with contextlib.suppress(Exception):
                    await obj.close()
        if self._event_task is not None:
            self._event_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._event_task
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                await self._subscriber.close()
        if self._dump_client is not None:
            await self._dump_client.close()
        if self._durable is not None:
            await self._durable.close()

    async def _consume(self, sub: Any) -> None:
        async for env in sub:
            try:
                event = decode_router_event(env.payload)
            except ValueError as exc:
                logger.warning("dropping malformed KV event from %x: %s", env.publisher_id, exc)
                self.metrics.events_applied.labels("unknown", "invalid_block").inc()
                continue
            self.apply_event(event)

    # -- replica sync (reference §2.8) -----------------------------------------------------------

    def _sync(self, request_id: str, key: WorkerKey, data: Any) -> None:
        if self._sync_pub is None:
            return
        event = ActiveSequenceEvent(request_id, key[0], key[1], self.router_id, data)
        task = asyncio.get_running_loop().create_task(self._sync_pub.publish(event))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _consume_sync(self, sub: Any) -> None:
        async for env in sub:
            try:
                ev = env.decode(ActiveSequenceEvent)
            except Exception:
                continue
            if ev.router_id != self.router_id:
                self.apply_replica_event(ev)

    def apply_replica_event(self, ev: ActiveSequenceEvent) -> None:
        """Mirror another replica's booking so both see the same worker load."""
        if ev.worker_id not in self._live:
            return  # a worker this replica has not seen, or has already removed with its bookings
        rid = f"replica-{ev.router_id:x}-{ev.request_id}"
        key = (ev.worker_id, ev.dp_rank)
        data = ev.data
        if isinstance(data, AddRequest):
            self.sequences.add_worker(key)
            self.sequences.add_request(rid, key, data.token_sequence, data.isl, data.overlap,
                                       data.expected_output_tokens, now=time.monotonic())
        elif data == "MarkPrefillCompleted":
            self.sequences.mark_prefill_completed(rid)
        elif data == "Free":
            self.sequences.free(rid)
            self._wake_queue()
        self._publish_load(key)

    def apply_event(self, event: RouterEvent) -> str:
        if event.storage_tier != "device":
            return "ignored"
        # Durable mode replays history from before this router saw any worker: index it all (workers
        # removed later are dropped from the index by the instance watch as usual).
        if event.worker_id not in self._live and not self.config.durable_kv_events:
            kind = type(event.event.data).__name__.removeprefix("Kv").lower()
            self.metrics.events_applied.labels(kind, "unknown_worker").inc()
            return "unknown_worker"
        pending = self._recovering.get(event.worker_id)
        if pending is not None:
            pending.append(event)  # replayed after the worker's snapshot
            return "buffered"
        status = self.indexer.apply_event(event)
        kind = type(event.event.data).__name__.removeprefix("Kv").lower()
        self.metrics.events_applied.labels(kind, status).inc()
        if status != "ok":
            logger.debug("KV event from worker %x not applied: %s", event.worker_id, status)
        return status

    def _on_gap(self, publisher_id: int, expected: int, got: int) -> None:
        self.metrics.event_gaps.inc(got - expected)
        logger.warning("missed %d KV events from worker %x; re-reading its cache", got - expected, publisher_id)
        self._schedule_recovery(publisher_id, "gap")

    # -- recovery from worker snapshots (reference §2.7) -------------------------------------------

    def _schedule_recovery(self, worker_id: int, why: str) -> None:
        if self._dump_client is None or worker_id in self._recovering:
            return
        self._recovering[worker_id] = []
        task = asyncio.get_running_loop().create_task(self._recover(worker_id, why))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _recover(self, worker_id: int, why: str) -> None:
        buffered: list[RouterEvent] = []
        try:
            assert self._dump_client is not None
            if not await self._dump_client.wait_for_instance(worker_id, DUMP_WAIT_SECS):
                return  # a worker without kv_dump (e.g. a real engine behind the ZMQ bridge)
            reply = None
            async for item in await self._dump_client.direct({}, worker_id):
                reply = item
            last_ids, events = parse_dump(reply)
            if worker_id not in self._live:
                return  # removed while its snapshot was in flight
            buffered = self._recovering.get(worker_id, [])
            self.indexer.clear_worker(worker_id)
            for ev in events:
                self.indexer.apply_event(ev)
            for ev in buffered:
                if newer_than(ev, last_ids):
                    self.apply_event(ev)
            self.metrics.recoveries.labels(why).inc()
            logger.info("rebuilt worker %x's index from its snapshot (%s): %d events", worker_id, why, len(events))
        except (errors.DynamoError, ValueError) as exc:
            logger.warning("cannot recover worker %x's KV index (%s): %s", worker_id, why, exc)
            for ev in self._recovering.get(worker_id, []):
                self.apply_event(ev)
        finally:
            self._recovering.pop(worker_id, None)

    def _on_instance_change(self, kind: str, instance: Any) -> None:
        wid = instance.instance_id
        if kind == "added":
            self._live.add(wid)
            self._schedule_recovery(wid, "new worker")
            # Parked requests can go to the newcomer; the client adds it to its instance set only after
            # telling its listeners, so look at the queue on the next loop turn.
            with contextlib.suppress(RuntimeError):  # no running loop: nothing can be parked either
                asyncio.get_running_loop().call_soon(self._wake_queue)
        if kind == "removed":
            self._live.discard(wid)
            self.indexer.remove_worker(wid)
            self.sequences.remove_worker(wid)
            for rank in self._labelled.pop(wid, ()):
                labels = (str(wid), str(rank))
                for gauge in (self.metrics.active_blocks, self.metrics.active_prefill):
                    with contextlib.suppress(KeyError):
                        gauge.remove(*labels)
            self._wake_queue()

    # -- decisions -----------------------------------------------------------------------------

    def candidates(self, exclude: set[int] | None = None) -> list[WorkerKey]:
        ids = self.client.instance_ids()
        allowed = self._eligible() if self._eligible is not None else None
        out: list[WorkerKey] = []
        for wid in ids:
            if (allowed is not None and wid not in allowed) or wid in self.busy or (exclude and wid in exclude):
                continue
            rc = self._runtime_config(wid)
            if rc is None:
                continue
            start = rc.data_parallel_start_rank
            out.extend((wid, start + r) for r in range(max(rc.data_parallel_size, 1)))
        return out

    def hashes(self, token_ids: list[int], lora_name: str | None = None) -> tuple[list[int], list[int]]:
        local = compute_block_hashes(token_ids, self.block_size, lora_name)
        return local, compute_seq_hashes(local)

    def overlaps(self, local_hashes: list[int]) -> OverlapScores:
        if self.approx is not None:
            self.approx.expire(time.monotonic())
        return self.indexer.find_matches(local_hashes)

    def config_for(self, request: PreprocessedRequest) -> KvRouterConfig:
        """The router's config with the request's ``router_config_override`` applied."""
        o = request.router_config_override
        if o is None:
            return self.config
        changes = {name: value for name, value in (
            ("overlap_score_weight", o.overlap_score_weight), ("router_assume_kv_reuse", o.assume_kv_reuse),
            ("router_track_prefill_tokens", o.track_prefill_tokens)) if value is not None}
        return dataclasses.replace(self.config, **changes) if changes else self.config

    def decide(self, token_ids: list[int], lora_name: str | None = None, cfg: KvRouterConfig | None = None,
               exclude: set[int] | None = None) -> tuple[Selection, list[int], list[int]]:
        cfg = cfg or self.config
        m = self.metrics
        t0 = time.perf_counter()
        local, seq = self.hashes(token_ids, lora_name)
        t1 = time.perf_counter()
        overlaps = self.overlaps(local)
        t2 = time.perf_counter()
        candidates = self.candidates(exclude)
        if not candidates:
            if exclude and set(self.client.instance_ids()) <= exclude:
                raise errors.Unavailable("no reachable worker for this model")
            if self.client.instance_ids():
                raise errors.ResourceExhausted("All workers are busy, please retry later")
            raise errors.Unavailable("no workers available for this model")
        for key in candidates:
            self.sequences.add_worker(key)
        isl = len(token_ids)
        selection = self.selector.select_booked(
            self.sequences, candidates, seq if cfg.router_track_active_blocks else None, isl, self.block_size,
            overlaps, overlap_score_weight=cfg.overlap_score_weight, temperature=cfg.router_temperature,
            track_prefill_tokens=cfg.router_track_prefill_tokens, assume_kv_reuse=cfg.router_assume_kv_reuse)
        t3 = time.perf_counter()
        m.hashing_ms.observe((t1 - t0) * 1000)
        m.find_matches_ms.observe((t2 - t1) * 1000)
        m.scheduling_ms.observe((t3 - t2) * 1000)
        m.total_ms.observe((t3 - t0) * 1000)
        return selection, local, seq

    def best_worker(self, token_ids: list[int], lora_name: str | None = None) -> tuple[int, int, int]:
        """``(worker_id, dp_rank, overlap_blocks)`` the router would choose now (no booking)."""
        sel, _, _ = self.decide(token_ids, lora_name)
        return sel.worker_id, sel.dp_rank, sel.overlap_blocks

    def get_potential_loads(self, token_ids: list[int], lora_name: str | None = None) -> list[PotentialLoad]:
        local, seq = self.hashes(token_ids, lora_name)
        for key in self.candidates():
            self.sequences.add_worker(key)
        return self.sequences.get_potential_loads(seq, len(token_ids), self.overlaps(local).scores)

    # -- queue -----------------------------------------------------------------------------------

    def _saturated(self) -> bool:
        threshold = self.config.router_queue_threshold
        if threshold is None:
            return False
        cands = self.candidates()
        if not cands:
            return False
        active = self.sequences.active_prefill_tokens()
        caps = {wid: (self._runtime_config(wid) or RuntimeConfig()).max_num_batched_tokens for wid, _ in cands}
        return should_queue({k: active.get(k, 0) for k in cands}, caps, threshold)

    async def _wait_for_capacity(self, isl: int, priority: int) -> None:
        """Park the request while every worker is saturated; ``ResourceExhausted`` (HTTP 503) when the
        queue is full or the request waited past ``router_queue_timeout_secs``."""
        if not self._saturated() and not len(self._queue):
            return
        cfg = self.config
        if len(self._queue) >= cfg.router_queue_max_size:
            self.metrics.queue_rejections.labels("full").inc()
            raise errors.ResourceExhausted(
                f"router queue is full ({len(self._queue)} requests waiting for a free worker, "
                f"--router-queue-max-size {cfg.router_queue_max_size}); retry later")
        deadline = time.monotonic() + cfg.router_queue_timeout_secs
        policy = QueuePolicy(self.config.router_queue_policy)
        key = priority_key(policy, priority_jump=max(priority, 0),
                           arrival_offset_s=time.monotonic() - self._queue_t0, isl=isl, overlap_blocks=0,
                           block_size=self.block_size)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.push(fut, key)
        self.metrics.queue_pending.set(len(self._queue))
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.metrics.queue_rejections.labels("timeout").inc()
                    raise errors.ResourceExhausted(
                        f"no worker had capacity within {cfg.router_queue_timeout_secs:g}s in the router queue "
                        "(--router-queue-timeout); retry later")
                try:
                    await asyncio.wait_for(asyncio.shield(fut), min(1.0, left))
                    return
                except asyncio.TimeoutError:
                    self._wake_queue()
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(Exception):
                self._queue.remove(fut)
            self.metrics.queue_pending.set(len(self._queue))

    def _wake_queue(self) -> None:
        while len(self._queue) and not self._saturated():
            fut = self._queue.pop()
            if not fut.done():
                fut.set_result(None)
                return

    # -- dispatch --------------------------------------------------------------------------------

    async def generate(self, request: PreprocessedRequest, headers: dict[str, str] | None = None,
                       instance_id: int | None = None,
                       on_decision: Callable[[RoutingDecision], None] | None = None,
                       ) -> tuple[int, AsyncIterator[Any]]:
        routing = request.routing
        lora = routing.lora_name if routing is not None else None
        priority = (routing.priority or 0) if routing is not None else 0
        cfg = self.config_for(request)
        await self._wait_for_capacity(len(request.token_ids), priority)
        tried: set[int] = set()
        while True:
            if instance_id is not None:
                if instance_id not in self.client.instance_ids():
                    raise errors.NotFound(f"worker instance {instance_id} is not available")
                local, seq = self.hashes(request.token_ids, lora)
                overlap = self.overlaps(local).scores
                dp = (routing.dp_rank if routing is not None and routing.dp_rank is not None else 0)
                sel = Selection(instance_id, dp, overlap.get((instance_id, dp), 0),
                                -(-len(request.token_ids) // self.block_size), [])
            else:
                sel, local, seq = self.decide(request.token_ids, lora, cfg, exclude=tried)
            rid = f"{request.request_id or 'r'}-{next(self._ids)}"
            key = (sel.worker_id, sel.dp_rank)
            isl = len(request.token_ids)
            expected = routing.expected_output_tokens if routing is not None else None
            tracked = seq if cfg.router_track_active_blocks else None
            self.sequences.add_request(rid, key, tracked, isl, sel.overlap_blocks, expected, now=time.monotonic(),
                                       track_prefill_tokens=cfg.router_track_prefill_tokens,
                                       assume_kv_reuse=cfg.router_assume_kv_reuse)
            self._sync(rid, key, AddRequest(tracked, isl, sel.overlap_blocks, expected))
            if self.approx is not None:
                self.approx.process_routing_decision(sel.worker_id, sel.dp_rank, local, seq, now=time.monotonic())
            self._publish_load(key)
            if self._queue:
                # Released from the queue and now booked: the next parked request may fit too (each wake
                # releases one, so that none is released on load not yet booked).
                self._wake_queue()
            m = self.metrics
            m.requests.labels(self.model).inc()
            m.input_tokens.labels(self.model).inc(isl)
            m.cached_tokens.labels(self.model).inc(sel.overlap_blocks * self.block_size)
            if sel.required_blocks:
                m.kv_hit_rate.labels(self.model).observe(min(1.0, sel.overlap_blocks / sel.required_blocks))
            if on_decision is not None:
                on_decision(RoutingDecision(sel, len(local)))
            hints = msgspec.structs.replace(routing, dp_rank=sel.dp_rank) if routing is not None \
                else RoutingHints(dp_rank=sel.dp_rank)
            wire = msgspec.structs.replace(request, routing=hints)
            try:
                stream = await self.client.direct(wire, sel.worker_id, headers)
            except errors.CannotConnect:
                self._release(rid, key)
                if instance_id is not None:
                    raise
                tried.add(sel.worker_id)
                continue
            except BaseException:
                self._release(rid, key)
                raise
            # An engine always computes at least the last prompt token, so a fully cached prompt reuses
            # one block less than the router's overlap: compare like with like.
            predicted = min(sel.overlap_blocks, (isl - 1) // self.block_size) * self.block_size
            return sel.worker_id, self._track(rid, key, stream, predicted)

    def _observe_accuracy(self, predicted: int, reported: int) -> None:
        """The router-accuracy SLI: the router's predicted cached tokens against the engine's count."""
        m = self.metrics
        m.accuracy_predicted.labels(self.model).inc(predicted)
        m.accuracy_reported.labels(self.model).inc(reported)
        diff = predicted - reported
        m.accuracy_error.labels(self.model).observe(diff)
        m.accuracy_outcomes.labels(self.model, "exact" if diff == 0 else "over" if diff > 0 else "under").inc()

    async def _track(self, rid: str, key: WorkerKey, stream: Any, predicted: int | None = None,
                     ) -> AsyncIterator[Any]:
        wid = key[0]
        self.inflight[wid] = self.inflight.get(wid, 0) + 1
        prefilled = False
        generated = 0
        track_output = self.config.router_track_output_blocks
        try:
            async for item in stream:
                if item.token_ids:
                    if not prefilled:
                        prefilled = True
                        self.sequences.mark_prefill_completed(rid)
                        self._sync(rid, key, "MarkPrefillCompleted")
                        self._publish_load(key)
                        self._wake_queue()
                    if track_output:
                        generated += len(item.token_ids)
                        self.sequences.add_output_tokens(rid, generated)
                if predicted is not None:
                    usage = getattr(item, "completion_usage", None)
                    if usage is not None and usage.cached_tokens is not None:
                        self._observe_accuracy(predicted, usage.cached_tokens)
                        predicted = None
                yield item
        finally:
            n = self.inflight.get(wid, 1) - 1
            if n <= 0:
                self.inflight.pop(wid, None)
            else:
                self.inflight[wid] = n
            if not stream._done:
                stream.cancel(kill=True)
            self._release(rid, key)

    def _release(self, rid: str, key: WorkerKey) -> None:
        self.sequences.free(rid)
        self._sync(rid, key, "Free")
        self._publish_load(key)
        self._wake_queue()

    def _publish_load(self, key: WorkerKey) -> None:
        if key[0] not in self._live:
            return  # a request outlived its worker: no series (or busy state) for a removed worker
        self._labelled.setdefault(key[0], set()).add(key[1])
        prefill = self.sequences.active_prefill_tokens().get(key, 0)
        blocks = self.sequences.active_blocks().get(key, 0)
        wid, rank = str(key[0]), str(key[1])
        self.metrics.active_blocks.labels(wid, rank).set(blocks)
        self.metrics.active_prefill.labels(wid, rank).set(prefill)
        if self.load_sink is not None:
            self.load_sink(ActiveLoad(worker_id=key[0], dp_rank=key[1], active_decode_blocks=blocks,
                                      active_prefill_tokens=prefill))
