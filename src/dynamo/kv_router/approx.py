"""Approximate prefix index for routers without KV events (reference §2.6, ``use_kv_events=false``).

The router assumes a worker caches the prompt it was just sent: every routing decision stores the
prompt's blocks for the chosen ``(worker, dp_rank)`` and (re)arms a TTL timer per (block, worker).
Expired timers remove their blocks; when the index grows past ``max_tree_size`` the timers closest to
expiry are removed first (deepest position first on ties, so a prompt's suffix goes before its prefix)
until it is back to ``max_tree_size × prune_target_ratio``.

Time is passed in explicitly (``now``) or read from an injected ``clock``; this module never reads the
wall clock on its own.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from dynamo.kv_router.indexer import OverlapScores, RadixTree, WorkerKey
from dynamo.kv_router.protocols import RouterEvent

DEFAULT_TTL_SECS = 120.0
DEFAULT_MAX_TREE_SIZE = 1 << 20
DEFAULT_PRUNE_TARGET_RATIO = 0.8


class ApproxKvIndexer:
    """A :class:`RadixTree` fed by the router's own routing decisions, with TTL and size pruning."""

    def __init__(
        self,
        ttl_secs: float = DEFAULT_TTL_SECS,
        max_tree_size: int = DEFAULT_MAX_TREE_SIZE,
        prune_target_ratio: float = DEFAULT_PRUNE_TARGET_RATIO,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be positive")
        if max_tree_size < 1:
            raise ValueError("max_tree_size must be at least 1")
        if not 0.0 <= prune_target_ratio <= 1.0:
            raise ValueError("prune_target_ratio must be in [0, 1]")
        self.ttl_secs = ttl_secs
        self.max_tree_size = max_tree_size
        self.prune_target_ratio = prune_target_ratio
        self._clock = clock
        self.tree = RadixTree()
        # (worker key, block hash) -> (expiry, position); the heap holds (expiry, -position, key, hash)
        # and may contain superseded entries, recognised by not matching the live timer.
        self._timers: dict[tuple[WorkerKey, int], tuple[float, int]] = {}
        self._heap: list[tuple[float, int, WorkerKey, int]] = []

    def _now(self, now: float | None) -> float | None:
        if now is not None:
            return now
        return self._clock() if self._clock is not None else None

    @property
    def current_size(self) -> int:
        """Number of (block, worker) entries currently indexed."""
        return len(self._timers)

    def process_routing_decision(
        self,
        worker_id: int,
        dp_rank: int,
        local_hashes: Sequence[int],
        seq_hashes: Sequence[int],
        now: float | None = None,
    ) -> None:
        """Record that ``(worker_id, dp_rank)`` now caches this prompt's blocks."""
        t = self._now(now)
        if t is None:
            raise ValueError("ApproxKvIndexer needs `now` or a clock")
        self.expire(t)
        n = min(len(local_hashes), len(seq_hashes))
        if n == 0:
            return
        key = (worker_id, dp_rank)
        self.tree.store_blocks(key, None, list(zip(seq_hashes[:n], local_hashes[:n], strict=True)))
        expiry = t + self.ttl_secs
        timers = self._timers
        heap = self._heap
        for position in range(n):
            h = seq_hashes[position]
            timers[(key, h)] = (expiry, position)
            heapq.heappush(heap, (expiry, -position, key, h))
        if len(heap) > 2 * len(timers) + 1024:
            self._compact()
        if len(timers) > self.max_tree_size:
            self._prune(int(self.max_tree_size * self.prune_target_ratio))

    def _compact(self) -> None:
        self._heap = [(exp, -pos, key, h) for (key, h), (exp, pos) in self._timers.items()]
        heapq.heapify(self._heap)

    def _pop_live(self) -> tuple[WorkerKey, int] | None:
        heap = self._heap
        timers = self._timers
        while heap:
            expiry, neg_pos, key, h = heapq.heappop(heap)
            live = timers.get((key, h))
            if live is not None and live[0] == expiry and live[1] == -neg_pos:
                del timers[(key, h)]
                return key, h
        return None

    def _remove(self, victims: list[tuple[WorkerKey, int]]) -> None:
        by_worker: dict[WorkerKey, list[int]] = {}
        for key, h in victims:
            by_worker.setdefault(key, []).append(h)
        for key, hashes in by_worker.items():
            self.tree.remove_blocks(key, hashes)

    def expire(self, now: float) -> int:
        """Remove every block whose TTL ran out by ``now``; returns how many were removed."""
        heap = self._heap
        timers = self._timers
        victims: list[tuple[WorkerKey, int]] = []
        while heap and heap[0][0] <= now:
            expiry, neg_pos, key, h = heapq.heappop(heap)
            live = timers.get((key, h))
            if live is not None and live[0] == expiry and live[1] == -neg_pos:
                del timers[(key, h)]
                victims.append((key, h))
        self._remove(victims)
        return len(victims)

    def _prune(self, target: int) -> None:
        victims: list[tuple[WorkerKey, int]] = []
        while len(self._timers) > target:
            popped = self._pop_live()
            if popped is None:
                break
            victims.append(popped)
        self._remove(victims)

    def find_matches(
        self, local_hashes: Sequence[int], early_exit: bool = False, now: float | None = None
    ) -> OverlapScores:
        """Same as :meth:`RadixTree.find_matches`, after expiring timers due by ``now`` (if known)."""
        t = self._now(now)
        if t is not None:
            self.expire(t)
        return self.tree.find_matches(local_hashes, early_exit)

    def remove_worker(self, worker_id: int) -> None:
        """Forget a departed worker and its timers."""
        self.tree.remove_worker(worker_id)
        self._timers = {k: v for k, v in self._timers.items() if k[0][0] != worker_id}
        self._compact()

    def workers(self) -> list[WorkerKey]:
        return self.tree.workers()

    def num_blocks(self, worker_id: int, dp_rank: int | None = None) -> int:
        return self.tree.num_blocks(worker_id, dp_rank)

    def dump_events(self) -> list[RouterEvent]:
        """The indexed blocks as stored events (timers are not part of the dump)."""
        return self.tree.dump_events()
