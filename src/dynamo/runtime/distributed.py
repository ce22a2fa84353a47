"""DistributedRuntime: one per process; owns the discovery store and the request/event planes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from dynamo.runtime import errors
from dynamo.runtime.component import Endpoint, Namespace, ServedEndpoint
from dynamo.runtime.component_metrics import ComponentMetrics
from dynamo.runtime.discovery.store import KeyValueStore, create_store
from dynamo.runtime.health import SystemHealth
from dynamo.runtime.naming import EndpointId
from dynamo.runtime.request_plane import REQUEST_PLANES, RequestPlaneClient, RequestPlaneServer
from dynamo.runtime.request_plane.tcp import TcpClient

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
        if request_plane not in REQUEST_PLANES:
            raise errors.ConfigError(
                f"unknown request plane {request_plane!r}; choose one of {', '.join(REQUEST_PLANES)}")
        self.store = store
        #: the transport this process *serves* on; as a client it reaches each instance over the
        #: transport that instance registered (so a frontend talks to tcp and nats workers alike)
        self.request_plane = request_plane
        self.event_plane_kind = event_plane.lower()
        self.metrics = ComponentMetrics()
        self._extra_registries: list[Any] = []
        self.disconnect_listeners: list[Any] = []
        self.tcp_client = TcpClient()
        self.tcp_client.on_disconnect = self.disconnect_listeners
        self._clients: dict[str, RequestPlaneClient] = {"tcp": self.tcp_client}
        self._client_lock = asyncio.Lock()
        self._server: RequestPlaneServer | None = None
        self._server_lock = asyncio.Lock()
        self._nats: Any = None
        self._nats_lock = asyncio.Lock()
        self.health = SystemHealth(self)
        #: workers publish KV events to JetStream (``--durable-kv-events``; see kv_router/durable.py)
        self.durable_kv_events = False
        self._status_server: Any = None
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
    async def from_settings(cls, config: Any = None) -> DistributedRuntime:
        """Build from a config object with ``store_kv``, ``request_plane`` and ``event_plane``; a
        missing config (or attribute) falls back to ``DYN_STORE_KV``, ``DYN_REQUEST_PLANE``,
        ``DYN_EVENT_PLANE`` and then the local defaults (file, tcp, zmq)."""
        runtime = await cls.create(
            getattr(config, "store_kv", None) or os.environ.get("DYN_STORE_KV", "file"),
            getattr(config, "request_plane", None) or os.environ.get("DYN_REQUEST_PLANE", "tcp"),
            getattr(config, "event_plane", None) or os.environ.get("DYN_EVENT_PLANE", "zmq"),
        )
        durable = getattr(config, "durable_kv_events", None)
        if durable is None:
            durable = os.environ.get("DYN_DURABLE_KV_EVENTS", "").lower() in ("1", "true", "yes", "on")
        runtime.durable_kv_events = bool(durable)
        return runtime

    @property
    def instance_id(self) -> int:
        return self.store.lease_id

    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)

    def endpoint(self, path: str) -> Endpoint:
        """``runtime.endpoint("dyn://ns.comp.ep")``."""
        eid = EndpointId.parse(path)
        return self.namespace(eid.namespace).component(eid.component).endpoint(eid.name)

    async def ensure_server(self) -> RequestPlaneServer:
        """This process's request-plane server (one for all its endpoints), started on first use."""
        async with self._server_lock:
            if self._server is None:
                from dynamo.runtime.request_plane import create_server

                server = await create_server(self.request_plane, self)
                await server.start()
                self._server = server
        return self._server

    @property
    def server(self) -> RequestPlaneServer:
        assert self._server is not None, "no endpoint served yet"
        return self._server

    @property
    def tcp_server(self) -> Any:
        """The server when serving on TCP (tests reach into its sockets)."""
        return self.server

    async def request_client(self, kind: str) -> RequestPlaneClient:
        """The client for instances registered on transport ``kind`` (created on first use)."""
        client = self._clients.get(kind)
        if client is not None:
            return client
        async with self._client_lock:
            client = self._clients.get(kind)
            if client is None:
                from dynamo.runtime.request_plane import create_client

                client = await create_client(kind, self)
                client.on_disconnect = self.disconnect_listeners
                self._clients[kind] = client
        return client

    async def nats_connection(self) -> Any:
        """The process's NATS connection for the request plane (``NATS_SERVER``), opened once."""
        async with self._nats_lock:
            if self._nats is None:
                from dynamo.runtime.event_plane.nats import connect

                self._nats = await connect(name=f"dynamo-rp-{self.instance_id:x}")
        return self._nats

    async def start_status_server(self) -> Any:
        """Start the system status server if ``DYN_SYSTEM_PORT`` is set (workers only; reference §1.8)."""
        from dynamo.runtime.status_server import StatusServer

        if self._status_server is None:
            self._status_server = await StatusServer.from_env(self)
        return self._status_server

    def add_metrics_registry(self, registry: Any) -> None:
        """Serve a component's own Prometheus registry (e.g. the router's) on the status server too."""
        self._extra_registries.append(registry)

    def metrics_registries(self) -> list[Any]:
        return [self.metrics.registry, *self._extra_registries]

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
        self.health.draining = True
        grace = grace_period_from_env() if grace_period is None else grace_period
        await self.unregister_all()
        graceful = [s for s in self.served if s.graceful and s.inflight() > 0]
        if graceful and grace > 0:
            logger.info("draining %d in-flight requests (grace period %.1fs)",
                        sum(s.inflight() for s in graceful), grace)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.wait_idle() for s in graceful)), grace)
        if self._server is not None:
            await self._server.close()
        if self._event_plane is not None:
            with contextlib.suppress(Exception):
                await self._event_plane.close()
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await client.close()
        if self._status_server is not None:
            await self._status_server.close()
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.close()
        with contextlib.suppress(Exception):
            await self.store.close()
        self._shutdown.set()
