"""Routing policies of a replay: round robin, or the real KV router's pure parts in simulated time.

:class:`KvRoutingPolicy` is the KV router's decision path without its runtime: the same radix-tree
indexer (fed synchronously by the simulated workers' KV events), active-sequence tracking, cost
selector and admission queue as :class:`dynamo.kv_router.router.KvRouter`, with time passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from dynamo.kv_router.config import KvRouterConfig
from dynamo.kv_router.indexer import RadixTree
from dynamo.kv_router.protocols import RouterEvent
from dynamo.kv_router.queue import PendingQueue, QueuePolicy, priority_key, should_queue
from dynamo.kv_router.selector import WorkerSelector
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker

ROUTER_MODES = ("round_robin", "kv_router")
#: spellings accepted for ``--router-mode`` (the frontend's names too)
ROUTER_MODE_ALIASES = {"round_robin": "round_robin", "round-robin": "round_robin", "kv_router": "kv_router",
                       "kv": "kv_router"}


class RouteDecision(NamedTuple):
    worker: int
    #: prefix blocks the router saw cached on the chosen worker
    overlap_blocks: int = 0
    #: the most any worker had (more than ``overlap_blocks`` = the load terms outweighed the overlap)
    best_overlap_blocks: int = 0


class RoutingPolicy(Protocol):
    """Where each request goes, and what the policy learns from the request's life."""

    def route(self, request_id: str, prompt_len: int, local_hashes: Sequence[int], seq_hashes: Sequence[int],
              now_ms: float) -> RouteDecision | None:
        """Where the request goes, or None when the request must wait (queued)."""
        ...

    def on_event(self, event: RouterEvent) -> None: ...

    def on_first_token(self, request_id: str) -> None: ...

    def on_finished(self, request_id: str) -> None: ...

    def release_waiting(self, now_ms: float) -> list[str]:
        """Queued request ids that may be routed now (in release order)."""
        ...

    def add_worker(self, worker: int) -> None:
        """A new worker is ready for requests (the planner scaled up)."""
        ...

    def drain_worker(self, worker: int) -> None:
        """No new requests for ``worker`` (it left discovery); its in-flight ones still report."""
        ...

    def remove_worker(self, worker: int) -> None:
        """A drained worker went idle and is gone."""
        ...


class RoundRobinPolicy:
    def __init__(self, num_workers: int) -> None:
        self.workers = list(range(num_workers))
        self._next = 0

    def route(self, request_id: str, prompt_len: int, local_hashes: Sequence[int], seq_hashes: Sequence[int],
              now_ms: float) -> RouteDecision | None:
        workers = self.workers
        i = self._next % len(workers)
        self._next = i + 1
        return RouteDecision(workers[i])

    def add_worker(self, worker: int) -> None:
        self.workers.append(worker)

    def drain_worker(self, worker: int) -> None:
        i = self.workers.index(worker)
        del self.workers[i]
        if i < self._next:
            self._next -= 1  # the rotation goes on where it was

    def remove_worker(self, worker: int) -> None:
        pass

    def on_event(self, event: RouterEvent) -> None:
        pass

    def on_first_token(self, request_id: str) -> None:
        pass

    def on_finished(self, request_id: str) -> None:
        pass

    def release_waiting(self, now_ms: float) -> list[str]:
        return []


class KvRoutingPolicy:
    """The KV router over ``num_workers`` simulated workers (worker ids 0..n-1, dp rank 0)."""

    def __init__(self, num_workers: int, block_size: int, max_num_batched_tokens: int,
                 config: KvRouterConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = cfg = (config or KvRouterConfig()).validate()
        self.block_size = block_size
        self.rng = rng or random.Random(0)
        self.indexer = RadixTree()
        self.sequences = ActiveSequencesMultiWorker(
            block_size, track_active_blocks=cfg.router_track_active_blocks,
            track_output_blocks=cfg.router_track_output_blocks, assume_kv_reuse=cfg.router_assume_kv_reuse,
            track_prefill_tokens=cfg.router_track_prefill_tokens, rng=self.rng)
        self.selector = WorkerSelector(self.rng)
        self.candidates = [(w, 0) for w in range(num_workers)]
        for key in self.candidates:
            self.sequences.add_worker(key)
        self._cap = max_num_batched_tokens
        self._caps = {w: max_num_batched_tokens for w in range(num_workers)}
        self._queue: PendingQueue[str] = PendingQueue()
        self._use_events = cfg.should_subscribe_to_kv_events
        #: workers drained by the planner: their blocks left the index, their later events are ignored
        self._gone: set[int] = set()

    def _saturated(self) -> bool:
        if self.config.router_queue_threshold is None:
            return False
        active = self.sequences.active_prefill_tokens()
        return should_queue({k: active.get(k, 0) for k in self.candidates}, self._caps,
                            self.config.router_queue_threshold)

    def route(self, request_id: str, prompt_len: int, local_hashes: Sequence[int], seq_hashes: Sequence[int],
              now_ms: float, *, from_queue: bool = False) -> RouteDecision | None:
        cfg = self.config
        if not from_queue and (self._queue or self._saturated()):
            key = priority_key(QueuePolicy(cfg.router_queue_policy), arrival_offset_s=now_ms / 1000.0,
                               isl=prompt_len, block_size=self.block_size)
            self._queue.push(request_id, key)
            return None
        overlaps = self.indexer.find_matches(local_hashes)
        sel = self.selector.select_booked(
            self.sequences, self.candidates, seq_hashes if cfg.router_track_active_blocks else None, prompt_len,
            self.block_size, overlaps, overlap_score_weight=cfg.overlap_score_weight,
            temperature=cfg.router_temperature, track_prefill_tokens=cfg.router_track_prefill_tokens,
            assume_kv_reuse=cfg.router_assume_kv_reuse)
        self.sequences.add_request(request_id, sel.worker, seq_hashes if cfg.router_track_active_blocks else None,
                                   prompt_len, sel.overlap_blocks, now=now_ms / 1000.0)
        return RouteDecision(sel.worker_id, sel.overlap_blocks, max(overlaps.scores.values(), default=0))

    def on_event(self, event: RouterEvent) -> None:
        if self._use_events and not (self._gone and event.worker_id in self._gone):
            self.indexer.apply_event(event)

    def on_first_token(self, request_id: str) -> None:
        self.sequences.mark_prefill_completed(request_id)

    def on_finished(self, request_id: str) -> None:
        self.sequences.free(request_id)

    def release_waiting(self, now_ms: float) -> list[str]:
        out: list[str] = []
        while self._queue and not self._saturated():
            out.append(self._queue.pop())
            # Booking happens when the caller routes it, so re-check saturation one request at a time.
            break
        return out

    def add_worker(self, worker: int) -> None:
        key = (worker, 0)
        self.candidates.append(key)
        self.sequences.add_worker(key)
        self._caps[worker] = self._cap

    def drain_worker(self, worker: int) -> None:
        # As a live router does when an instance leaves discovery: no more requests, and its cached
        # blocks leave the index at once (they can no longer be hit).
        self.candidates.remove((worker, 0))
        self._caps.pop(worker, None)
        self.indexer.remove_worker(worker)
        self._gone.add(worker)

    def remove_worker(self, worker: int) -> None:
        self.sequences.remove_worker(worker)

    @property
    def num_queued(self) -> int:
        return len(self._queue)


def make_policy(mode: str, num_workers: int, block_size: int, max_num_batched_tokens: int,
                config: KvRouterConfig | None = None, seed: int = 0) -> RoundRobinPolicy | KvRoutingPolicy:
    mode = ROUTER_MODE_ALIASES.get(mode, mode)
    if mode == "round_robin":
        return RoundRobinPolicy(num_workers)
    if mode == "kv_router":
        return KvRoutingPolicy(num_workers, block_size, max_num_batched_tokens, config, random.Random(seed))
    from dynamo.runtime.errors import InvalidArgument

    raise InvalidArgument(f"unknown router mode {mode!r}; expected one of {', '.join(ROUTER_MODES)}")
