"""etcd v3 store (clusters): a 10 s lease kept alive in the background; its id is the instance id.

Watches list the prefix, then watch from the next revision; when the connection drops they re-list
and emit the difference, so a restarted etcd never leaves a watcher with a stale view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlparse

import aetcd
import aetcd.exceptions

from dynamo.runtime.discovery.store import DEFAULT_TTL_SECS, KeyValueStore, Watch, WatchEvent
from dynamo.runtime.errors import CannotConnect

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _endpoints() -> list[tuple[str, int]]:
    raw = os.environ.get("ETCD_ENDPOINTS", "http://localhost:2379")
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        url = urlparse(item if "://" in item else f"http://{item}")
        out.append((url.hostname or "localhost", url.port or 2379))
    return out


def _prefix_end(prefix: bytes) -> bytes:
    # The smallest key greater than every key that starts with ``prefix``.
    buf = bytearray(prefix)
    while buf:
        if buf[-1] < 0xFF:
            buf[-1] += 1
            return bytes(buf)
        buf.pop()
    return b"\0"


class EtcdStore(KeyValueStore):
    def __init__(self, ttl: float = DEFAULT_TTL_SECS, endpoints: list[tuple[str, int]] | None = None) -> None:
        super().__init__(ttl)
        self._endpoints = endpoints or _endpoints()
        self._client: aetcd.Client | None = None
        self._lease: int = 0  # the current etcd lease
        self._instance_id: int = 0  # the first lease's id: stays the instance id across renewals
        self._owned: dict[bytes, bytes] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def lease_id(self) -> int:
        return self._instance_id

    @property
    def client(self) -> aetcd.Client:
        assert self._client is not None, "store not started"
        return self._client

    async def start(self) -> None:
        errors = []
        for host, port in self._endpoints:
            client = aetcd.Client(host=host, port=port, timeout=5, connect_wait_timeout=3)
            try:
                await client.connect()
                lease = await client.lease(int(self.ttl))
            except Exception as exc:
                errors.append(f"{host}:{port}: {exc}")
                with contextlib.suppress(Exception):
                    await client.close()
                continue
            self._client = client
            self._lease = self._instance_id = lease.id
            self._keepalive = asyncio.get_running_loop().create_task(self._keepalive_loop())
            logger.info("etcd store connected to %s:%d, lease %x", host, port, self._lease)
            return
        raise CannotConnect(f"cannot reach etcd at {os.environ.get('ETCD_ENDPOINTS', 'http://localhost:2379')}: "
                            + "; ".join(errors))

    async def _keepalive_loop(self) -> None:
        interval = max(self.ttl / 3.0, 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await self.client.refresh_lease(self._lease)
            except Exception as exc:
                logger.warning("etcd lease keep-alive failed (%s); retrying", exc)
                continue
            if reply is None or reply.TTL <= 0:
                # etcd forgot the lease (down longer than the TTL, or wiped): renew the registrations
                # under a new lease rather than leave a healthy process undiscoverable.
                await self._renew()

    async def _renew(self) -> None:
        while True:
            try:
                lease = await self.client.lease(int(self.ttl))
                for key, value in list(self._owned.items()):
                    await self.client.put(key, value, lease=lease.id)
            except Exception as exc:
                logger.warning("etcd: cannot renew registrations yet (%s)", exc)
                await asyncio.sleep(1.0)
                continue
            self._lease = lease.id
            logger.warning("etcd lease expired; re-registered %d keys under lease %x", len(self._owned), lease.id)
            return

    async def close(self) -> None:
        self._closed = True
        for task in [self._keepalive, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.revoke_lease(self._lease), 2)
            with contextlib.suppress(Exception):
                await self._client.close()

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Retry an operation through a short etcd outage (restart, leader change) for up to one TTL."""
        deadline = asyncio.get_running_loop().time() + self.ttl
        delay = 0.1
        while True:
            try:
                return await op()
            except aetcd.exceptions.ConnectionFailedError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise CannotConnect(f"etcd {what} failed: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        k = key.encode()
        if leased:
            self._owned[k] = value
        else:
            self._owned.pop(k, None)
        await self._retry("put", lambda: self.client.put(k, value, lease=self._lease if leased else None))

    async def get(self, key: str) -> bytes | None:
        res = await self._retry("get", lambda: self.client.get(key.encode()))
        return None if res is None else res.value

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        res = await self._retry("get", lambda: self.client.get_prefix(prefix.encode()))
        return {kv.key.decode(): kv.value for kv in res.kvs}

    async def keys(self, prefix: str) -> list[str]:
        res = await self._retry("get", lambda: self.client.get_prefix(prefix.encode(), keys_only=True))
        return [kv.key.decode() for kv in res.kvs]

    async def delete(self, key: str) -> None:
        self._owned.pop(key.encode(), None)
        await self._retry("delete", lambda: self.client.delete(key.encode()))

    async def watch(self, prefix: str) -> Watch:
        watch = Watch(on_close=lambda w: task.cancel())
        known: dict[str, bytes] = {}
        first = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._watch_loop(prefix, watch, known, first))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await first
        return watch

    async def _watch_loop(self, prefix: str, watch: Watch, known: dict[str, bytes],
                          first: asyncio.Future[None]) -> None:
        pkey = prefix.encode()
        backoff = 0.2
        while not self._closed:
            try:
                res = await self.client.get_prefix(pkey)
                current = {kv.key.decode(): kv.value for kv in res.kvs}
                for key, value in current.items():
                    if known.get(key) != value:
                        watch.push(WatchEvent("put", key, value))
                for key in known.keys() - current.keys():
                    watch.push(WatchEvent("delete", key))
                known.clear()
                known.update(current)
                if not first.done():
                    first.set_result(None)
                stream = await self.client.watch(pkey, range_end=_prefix_end(pkey),
                                                 start_revision=res.header.revision + 1)
                backoff = 0.2
                async for event in stream:
                    key = event.kv.key.decode()
                    if event.kind == "PUT":
                        known[key] = event.kv.value
                        watch.push(WatchEvent("put", key, event.kv.value))
                    elif known.pop(key, None) is not None:
                        watch.push(WatchEvent("delete", key))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not first.done():
                    first.set_exception(CannotConnect(f"etcd watch on {prefix!r} failed: {exc}"))
                    return
                logger.warning("etcd watch on %r interrupted (%s); re-listing", prefix, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
