"""The compiled KV indexer: ``_radix.RadixCore`` (C) plus the cold parts of the tree's interface.

Events, queries and worker removal run in C (``_radix.c``); what is left here reads the core's live
dicts (per-worker block counts, last event ids) or builds snapshots through the same
:func:`~dynamo.kv_router.indexer.events_from_export` as the pure-Python tree. Importing this module
fails with ImportError when the extension was not built; :func:`indexer.select_radix_tree` falls back.
"""

from __future__ import annotations

from collections import Counter

from dynamo.kv_router import _radix  # type: ignore[attr-defined]  # compiled by native_build
from dynamo.kv_router.indexer import (
    STATUS_BLOCK_NOT_FOUND,
    STATUS_INVALID_BLOCK,
    STATUS_OK,
    STATUS_PARENT_NOT_FOUND,
    OverlapScores,
    WorkerKey,
    events_from_export,
)
from dynamo.kv_router.protocols import KvCacheEvent, KvCleared, KvRemoved, KvStored, RouterEvent, StoredBlock

_radix._bind(RouterEvent, KvCacheEvent, KvStored, KvRemoved, KvCleared, StoredBlock, OverlapScores, STATUS_OK,
             STATUS_PARENT_NOT_FOUND, STATUS_BLOCK_NOT_FOUND, STATUS_INVALID_BLOCK)

# The order of RadixCore._counts().
_COUNT_KEYS = (
    ("stored", STATUS_OK),
    ("stored", STATUS_PARENT_NOT_FOUND),
    ("stored", STATUS_INVALID_BLOCK),
    ("removed", STATUS_OK),
    ("removed", STATUS_BLOCK_NOT_FOUND),
    ("cleared", STATUS_OK),
)


class NativeRadixTree(_radix.RadixCore):  # type: ignore[misc]
    """:class:`~dynamo.kv_router.indexer.PyRadixTree`'s interface and behaviour on the compiled core."""

    __slots__ = ()

    @property
    def event_counts(self) -> Counter[tuple[str, str]]:
        """``(event_type, status)`` → number of events applied (a fresh Counter per read)."""
        return Counter({k: n for k, n in zip(_COUNT_KEYS, self._counts(), strict=True) if n})

    def workers(self) -> list[WorkerKey]:
        """Every ``(worker_id, dp_rank)`` the index knows (including ones cleared to zero blocks)."""
        return list(self._sizes)

    def num_blocks(self, worker_id: int, dp_rank: int | None = None) -> int:
        """Blocks held by ``worker_id`` (one dp rank, or summed over all of them when ``dp_rank`` is None)."""
        sizes = self._sizes
        if dp_rank is not None:
            return sizes.get((worker_id, dp_rank), 0)
        return sum(n for k, n in sizes.items() if k[0] == worker_id)

    def last_event_id(self, worker_id: int, dp_rank: int = 0) -> int | None:
        """Highest ``event_id`` applied for this ``(worker, dp_rank)``, or None if none was seen."""
        return self._last_ids.get((worker_id, dp_rank))

    def detect_gap(self, worker_id: int, dp_rank: int, event_id: int) -> tuple[int, int] | None:
        """The inclusive id range missing before ``event_id`` (see ``PyRadixTree.detect_gap``)."""
        last = self._last_ids.get((worker_id, dp_rank))
        if last is None or event_id <= last + 1:
            return None
        return (last + 1, event_id - 1)

    def block_hashes(self, worker_id: int, dp_rank: int = 0) -> set[int]:
        """The external block hashes ``(worker_id, dp_rank)`` has in the index."""
        return self._block_hashes((worker_id, dp_rank))

    def dump_events(self) -> list[RouterEvent]:
        """Snapshot events that rebuild this index in an empty tree (see ``PyRadixTree.dump_events``)."""
        return events_from_export(*self._export())
