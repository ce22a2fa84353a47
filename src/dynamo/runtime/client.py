"""Client of one endpoint: follows its live instances through the store and routes requests.

Instances arrive and leave through the discovery watch. An instance whose connection just failed is
set aside at once (before the store catches up), so no further request is sent to a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.discovery.store import Watch
from dynamo.runtime.request_plane.stream import ResponseStream
from dynamo.runtime.tasks import supervise

if TYPE_CHECKING:
    from dynamo.runtime.component import Endpoint

logger = logging.getLogger(__name__)

#: how long an instance whose connection failed stays out of rotation unless the store re-adds it
SUSPECT_SECS = 30.0


def endpoint_path(instance: registry.Instance) -> str:
    return f"{instance.instance_id:x}/{instance.namespace}.{instance.component}.{instance.endpoint}"


class Client:
    def __init__(self, endpoint: Endpoint, response_type: type | None = None,
                 merge: Callable[[Any, Any], Any] | None = None) -> None:
        self.endpoint = endpoint
        self._runtime = endpoint.runtime
        self._instances: dict[int, registry.Instance] = {}
        self._suspect: dict[int, float] = {}
        self._ids: list[int] = []
        self._rr = 0
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[str, registry.Instance], None]] = []
        self._merge = merge
        self._decode = (
            msgspec.msgpack.Decoder(response_type).decode if response_type is not None
            else msgspec.msgpack.Decoder().decode
        )

    async def start(self) -> None:
        ep = self.endpoint
        prefix = registry.instances_prefix(ep.namespace, ep.component, ep.name)
        self._watch = await self._runtime.store.watch(prefix)
        self._runtime.disconnect_listeners.append(self._on_disconnect)
        watch = self._watch
        self._task = supervise("endpoint instance follower", lambda: self._follow(watch)).task
        # Drain the initial snapshot so instance_ids() is accurate right after start().
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ValueError):
            self._runtime.disconnect_listeners.remove(self._on_disconnect)

    def on_change(self, listener: Callable[[str, registry.Instance], None]) -> None:
        """``listener("added"|"removed", instance)`` on every change of the instance set."""
        self._listeners.append(listener)

    async def _follow(self, watch: Watch) -> None:
        async for event in watch:
            if event.kind == "put" and event.value is not None:
                try:
                    inst = registry.decode_instance(event.value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    logger.warning("ignoring malformed instance record %s", event.key)
                    continue
                self._instances[inst.instance_id] = inst
                self._suspect.pop(inst.instance_id, None)
                self._notify("added", inst)
            elif event.kind == "delete":
                iid = _id_from_key(event.key)
                inst = self._instances.pop(iid, None) if iid is not None else None
                if inst is not None:
                    self._suspect.pop(iid, None)
                    self._notify("removed", inst)
            self._refresh()

    def _notify(self, kind: str, inst: registry.Instance) -> None:
        for listener in self._listeners:
            try:
                listener(kind, inst)
            except Exception:
                logger.exception("instance listener failed")

    def _on_disconnect(self, address: str) -> None:
        now = time.monotonic()
        hit = False
        for iid, inst in self._instances.items():
            if inst.address == address:
                self._suspect[iid] = now
                hit = True
        if hit:
            logger.info("instances at %s lost their connection; routing around them", address)
            self._refresh()

    def report_instance_down(self, instance_id: int) -> None:
        """Take an instance out of rotation until discovery confirms it again."""
        self._suspect[instance_id] = time.monotonic()
        self._refresh()

    def _refresh(self) -> None:
        now = time.monotonic()
        for iid, since in list(self._suspect.items()):
            if now - since > SUSPECT_SECS:
                del self._suspect[iid]
        self._ids = sorted(i for i in self._instances if i not in self._suspect)
        self._changed.set()

    def instance_ids(self) -> list[int]:
        """Live, routable instance ids (sorted)."""
        if self._suspect:
            self._refresh()
        return list(self._ids)

    def instances(self) -> list[registry.Instance]:
        return [self._instances[i] for i in self.instance_ids()]

    async def wait_for_instances(self, timeout: float | None = None, count: int = 1) -> list[int]:
        """Wait until at least ``count`` instances are live."""

        async def wait() -> list[int]:
            while len(self.instance_ids()) < count:
                self._changed.clear()
                await self._changed.wait()
            return self.instance_ids()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError as exc:
            ep = self.endpoint
            raise errors.Unavailable(f"no instances of {ep.url} after {timeout}s") from exc

    async def wait_for_instance(self, instance_id: int, timeout: float) -> bool:
        """Wait until ``instance_id`` is live; False after ``timeout`` seconds."""

        async def wait() -> None:
            while instance_id not in self.instance_ids():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- routing ---------------------------------------------------------------------------------

    def _require_ids(self) -> list[int]:
        ids = self._ids
        if self._suspect:
            ids = self.instance_ids()
        if not ids:
            raise errors.Unavailable(f"no instances available for {self.endpoint.url}")
        return ids

    async def round_robin(self, request: Any, headers: dict[str, str] | None = None) -> ResponseStream:
        ids = self._require_ids()
        self._rr += 1
        return await self.direct(request, ids[self._rr % len(ids)], headers)

    async def random(self, request: Any, headers: dict[str, str] | None = None) -> ResponseStream:
        return await self.direct(request, random.choice(self._require_ids()), headers)

    async def direct(self, request: Any, instance_id: int, headers: dict[str, str] | None = None) -> ResponseStream:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise errors.NotFound(f"instance {instance_id:x} of {self.endpoint.url} not found")
        kind, address = next(iter(inst.transport.items()))
        plane = self._runtime.tcp_client if kind == "tcp" else await self._runtime.request_client(kind)
        try:
            return await plane.request(address, endpoint_path(inst), request, headers, self._decode, self._merge)
        except (errors.CannotConnect, errors.Disconnected, errors.ConnectionTimeout):
            self.report_instance_down(instance_id)
            raise


def _id_from_key(key: str) -> int | None:
    try:
        return int(key.rsplit("/", 1)[-1], 16)
    except ValueError:
        return None
