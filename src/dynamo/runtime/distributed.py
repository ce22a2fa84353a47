"""DistributedRuntime: one per process; owns the discovery store and the request/event planes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from dynamo.runtime import errors
from dynamo.runtime.component import Endpoint, Namespace, ServedEndpoint
from dynamo.runtime.discovery.store import KeyValueStore, create_store
from dynamo.runtime.naming import EndpointId
from dynamo.runtime.request_plane.tcp import TcpClient, TcpServer

logger = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD_SECS = 5.0


def grace_period_from_env() -> float:
    raw = os.environ.get("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS")
    if not raw:
        return DEFAULT_GRACE_PERIOD_SECS
    try:
        return float(raw)
    except ValueError as exc:
        raise errors.ConfigError(
            f"environment variable DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS={raw!r} is not a number") from exc


class DistributedRuntime:
    def __init__(
        self,
        store: KeyValueStore,
        *,
        request_plane: str = "tcp",
        event_plane: str = "zmq",
    ) -> None:
        request_plane = request_plane.lower()
        if request_plane != "tcp":
            raise errors.ConfigError(
                f"request plane {request_plane!r} is not available yet; use --request-plane tcp")
        self.store = store
        self.request_plane = request_plane
        self.event_plane_kind = event_plane.lower()
        self.tcp_client = TcpClient()
        self._tcp_server: TcpServer | None = None
        self._server_lock = asyncio.Lock()
        self._event_plane: Any = None
        self.served: list[ServedEndpoint] = []
        self._shutdown = asyncio.Event()
        self._closing = False
        self._lease_task: asyncio.Task[None] | None = None
        store.on_lease_lost(self._on_lease_lost)

    @classmethod
    async def create(
        cls, store_kv: str = "file", request_plane: str = "tcp", event_plane: str = "zmq"
    ) -> DistributedRuntime:
        store = create_store(store_kv)
        await store.start()
        return cls(store, request_plane=request_plane, event_plane=event_plane)

    @classmethod
    async def from_settings(cls, config: Any) -> DistributedRuntime:
        """Build from a config object with ``store_kv``, ``request_plane`` and ``event_plane``."""
        return await cls.create(
            getattr(config, "store_kv", None) or os.environ.get("DYN_STORE_KV", "file"),
            getattr(config, "request_plane", None) or os.environ.get("DYN_REQUEST_PLANE", "tcp"),
            getattr(config, "event_plane", None) or os.environ.get("DYN_EVENT_PLANE", "zmq"),
        )

    @property
    def instance_id(self) -> int:
        return self.store.lease_id

    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)

    def endpoint(self, path: str) -> Endpoint:
        """``runtime.endpoint("dyn://ns.comp.ep")``."""
        eid = EndpointId.parse(path)
        return self.namespace(eid.namespace).component(eid.component).endpoint(eid.name)

    async def ensure_server(self) -> TcpServer:
        async with self._server_lock:
            if self._tcp_server is None:
                server = TcpServer()
                await server.start()
                self._tcp_server = server
        return self._tcp_server

    @property
    def tcp_server(self) -> TcpServer:
        assert self._tcp_server is not None, "no endpoint served yet"
        return self._tcp_server

    def event_plane(self) -> Any:
        if self._event_plane is None:
            from dynamo.runtime.event_plane import create_event_plane

            self._event_plane = create_event_plane(self.event_plane_kind, self)
        return self._event_plane

    # -- lifecycle --------------------------------------------------------------------------------

    def is_shutting_down(self) -> bool:
        return self._closing

    async def wait_for_shutdown(self) -> None:
        await self._shutdown.wait()

    def _on_lease_lost(self) -> None:
        logger.error("discovery lease lost: this process is no longer discoverable; shutting down")
        self._lease_task = asyncio.get_running_loop().create_task(self.shutdown(grace_period=0))

    async def unregister_all(self) -> None:
        for served in self.served:
            with contextlib.suppress(Exception):
                await served.unregister()

    async def shutdown(self, grace_period: float | None = None) -> None:
        """Unregister, let in-flight streams finish (bounded), then close planes and the store."""
        if self._closing:
            await self._shutdown.wait()
            return
        self._closing = True
        grace = grace_period_from_env() if grace_period is None else grace_period
        await self.unregister_all()
        graceful = [s for s in self.served if s.graceful and s.inflight() > 0]
        if graceful and grace > 0:
            logger.info("draining %d in-flight requests (grace period %.1fs)",
                        sum(s.inflight() for s in graceful), grace)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.wait_idle() for s in graceful)), grace)
        if self._tcp_server is not None:
            await self._tcp_server.close()
        if self._event_plane is not None:
            with contextlib.suppress(Exception):
                await self._event_plane.close()
        await self.tcp_client.close()
        with contextlib.suppress(Exception):
            await self.store.close()
        self._shutdown.set()
