"""Router admission queue: when to park a request and in which order to release it (reference §2.4).

A request is parked when **every** candidate worker is already saturated with prompt work, i.e.
``active_prefill_tokens > threshold × max_num_batched_tokens`` for all of them (a worker that does
not report ``max_num_batched_tokens`` counts as 10,000,000). Parked requests leave the queue highest
key first:

* ``fcfs``: ``priority_jump − arrival_offset_s`` (earlier arrivals first; the default)
* ``lcfs``: ``priority_jump + arrival_offset_s``
* ``wspt``: ``(1 + priority_jump) / max(1, isl − overlap·block_size)`` (short remaining prefill first)

This module is the pure data structure; the async glue serialises admission and drains the queue on
every prefill completion / free and on a periodic recheck.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Generic, TypeVar

from dynamo.kv_router.indexer import WorkerKey

DEFAULT_MAX_NUM_BATCHED_TOKENS = 10_000_000

T = TypeVar("T")


class QueuePolicy(str, Enum):
    FCFS = "fcfs"
    LCFS = "lcfs"
    WSPT = "wspt"


def priority_key(
    policy: QueuePolicy | str,
    *,
    priority_jump: float = 0.0,
    arrival_offset_s: float = 0.0,
    isl: int = 0,
    overlap_blocks: int = 0,
    block_size: int = 1,
) -> float:
    """The release key of a parked request (higher leaves first). Negative priorities count as 0."""
    jump = max(priority_jump, 0.0)
    policy = QueuePolicy(policy)
    if policy is QueuePolicy.FCFS:
        return jump - arrival_offset_s
    if policy is QueuePolicy.LCFS:
        return jump + arrival_offset_s
    return (1.0 + jump) / max(1, isl - overlap_blocks * block_size)


def worker_saturated(
    active_prefill_tokens: int, max_num_batched_tokens: int | None, threshold: float
) -> bool:
    limit = DEFAULT_MAX_NUM_BATCHED_TOKENS if max_num_batched_tokens is None else max_num_batched_tokens
    return active_prefill_tokens > threshold * limit


def should_queue(
    candidates: Mapping[WorkerKey, int],
    max_num_batched_tokens: Mapping[int, int | None],
    threshold: float | None,
    *,
    pinned: WorkerKey | None = None,
    restricted: bool = False,
) -> bool:
    """Whether a request must wait instead of being dispatched now.

    ``candidates`` maps each candidate to its active prefill tokens; ``max_num_batched_tokens`` is per
    worker id (from its runtime config). A request pinned to one ``(worker, dp_rank)`` is checked
    against that worker only; one merely restricted to a subset of workers (``restricted`` without a
    pin) bypasses the check. No threshold, or no candidate, never queues.
    """
    if threshold is None:
        return False
    if pinned is not None:
        return worker_saturated(candidates.get(pinned, 0), max_num_batched_tokens.get(pinned[0]), threshold)
    if restricted or not candidates:
        return False
    return all(
        worker_saturated(tokens, max_num_batched_tokens.get(key[0]), threshold)
        for key, tokens in candidates.items()
    )


class PendingQueue(Generic[T]):
    """Max-priority queue of parked requests; FIFO among equal keys."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def push(self, item: T, key: float) -> None:
        heapq.heappush(self._heap, (-key, next(self._seq), item))

    def pop(self) -> T:
        """Remove and return the highest-key item; raises IndexError when empty."""
        return heapq.heappop(self._heap)[2]

    def peek(self) -> T:
        return self._heap[0][2]

    def remove(self, item: T) -> bool:
        """Drop a parked request (e.g. its client went away); O(n), rare."""
        for i, entry in enumerate(self._heap):
            if entry[2] is item:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[T]:
        """Items in release order (does not consume the queue)."""
        return (entry[2] for entry in sorted(self._heap))
