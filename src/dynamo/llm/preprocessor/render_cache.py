"""A cache of rendered chat prompts bounded by bytes, not entries.

A count bound lets a few huge conversations pin hundreds of megabytes (256 entries x a 1 MB prompt,
keyed by the 1 MB of messages that produced it); a byte bound keeps the cost fixed whatever the
prompt sizes. Entries are charged for their key (the serialised messages) and the rendered text.
Shared by the event loop and the preprocessing threads, hence the lock.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

#: default budget per chat template (per model)
RENDER_CACHE_BYTES = 16 * 1024 * 1024
#: an entry above this fraction of the budget is not cached: it would evict everything else
MAX_ENTRY_FRACTION = 0.25


class RenderCache:
    """LRU map ``key bytes -> rendered str`` whose keys and values together stay within ``max_bytes``."""

    __slots__ = ("_entries", "_lock", "bytes", "hits", "max_bytes", "misses")

    def __init__(self, max_bytes: int = RENDER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cost(key: bytes, text: str) -> int:
        return len(key) + sys.getsizeof(text)

    def get(self, key: bytes) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, text: str) -> bool:
        """Remember ``text``; False when it is too large to be worth a place."""
        cost = self.cost(key, text)
        if cost > self.max_bytes * MAX_ENTRY_FRACTION:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (text, cost)
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
        return True
