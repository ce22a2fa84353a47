"""The key-value store behind discovery: one interface, three backends (mem, file, etcd).

Every store owns one *primary lease*: keys written with ``leased=True`` live only as long as the
process keeps that lease alive, so a crashed process disappears from discovery within the TTL.
The lease id doubles as the process's instance id.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECS = 10.0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes | None = None


class Watch:
    """An async iterator of :class:`WatchEvent` that starts with the prefix's current contents."""

    def __init__(self, on_close: Callable[[Watch], None] | None = None) -> None:
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._on_close = on_close
        self.closed = False

    def push(self, event: WatchEvent) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        if self._on_close is not None:
            self._on_close(self)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


class KeyValueStore(abc.ABC):
    """Async key-value store with a primary lease and prefix watches."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECS) -> None:
        self.ttl = ttl
        self._lease_lost_callbacks: list[Callable[[], None]] = []

    @property
    @abc.abstractmethod
    def lease_id(self) -> int:
        """The primary lease id (the process's instance id); valid after :meth:`start`."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create the primary lease."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Revoke the lease (removing every leased key) and release resources."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None: ...

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]: ...

    async def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` without their values (backends override this to move no values)."""
        return list(await self.get_prefix(prefix))

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def watch(self, prefix: str) -> Watch:
        """Current contents under ``prefix`` as ``put`` events, then live changes."""

    def on_lease_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the primary lease expires: the process is no longer discoverable."""
        self._lease_lost_callbacks.append(callback)

    def _lease_lost(self) -> None:
        logger.error("discovery lease %x lost", self.lease_id)
        for cb in self._lease_lost_callbacks:
            try:
                cb()
            except Exception:
                logger.exception("lease-lost callback failed")


def create_store(kind: str, ttl: float = DEFAULT_TTL_SECS) -> KeyValueStore:
    """Build the store named by ``--store-kv``: ``mem``, ``file`` or ``etcd``."""
    from dynamo.runtime.errors import ConfigError

    kind = kind.lower()
    if kind == "mem":
        from dynamo.runtime.discovery.mem import MemoryStore

        return MemoryStore(ttl=ttl)
    if kind == "file":
        from dynamo.runtime.discovery.file import FileStore

        return FileStore(ttl=ttl)
    if kind == "etcd":
        from dynamo.runtime.discovery.etcd import EtcdStore

        return EtcdStore(ttl=ttl)
    raise ConfigError(f"unknown store {kind!r}: expected one of mem, file, etcd")
