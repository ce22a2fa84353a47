"""Namespace → Component → Endpoint: the names components are served and found under."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from dynamo.runtime.client import Client, endpoint_path
from dynamo.runtime.context import RequestContext
from dynamo.runtime.discovery import registry

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)

Handler = Callable[[Any, RequestContext], AsyncIterator[Any]]


class Namespace:
    def __init__(self, runtime: DistributedRuntime, name: str) -> None:
        self.runtime = runtime
        self.name = name

    def component(self, name: str) -> Component:
        return Component(self, name)

    async def event_publisher(self, topic: str, **kwargs: Any) -> Any:
        return await self.runtime.event_plane().publisher(self.name, None, topic, **kwargs)

    async def subscribe(self, topic: str, **kwargs: Any) -> Any:
        return await self.runtime.event_plane().subscriber(self.name, None, topic, **kwargs)


class Component:
    def __init__(self, namespace: Namespace, name: str) -> None:
        self.namespace = namespace
        self.runtime = namespace.runtime
        self.name = name

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(self, name)

    async def event_publisher(self, topic: str, **kwargs: Any) -> Any:
        return await self.runtime.event_plane().publisher(self.namespace.name, self.name, topic, **kwargs)

    async def subscribe(self, topic: str, **kwargs: Any) -> Any:
        return await self.runtime.event_plane().subscriber(self.namespace.name, self.name, topic, **kwargs)


class ServedEndpoint:
    """A live registration of an endpoint instance; ``unregister()`` stops new requests reaching it."""

    def __init__(self, endpoint: Endpoint, instance: registry.Instance, graceful: bool) -> None:
        self.endpoint = endpoint
        self.instance = instance
        self.graceful = graceful
        self.path = endpoint_path(instance)
        self.registered = True

    @property
    def instance_id(self) -> int:
        return self.instance.instance_id

    async def unregister(self) -> None:
        if self.registered:
            self.registered = False
            rt = self.endpoint.runtime
            await rt.store.delete(self.endpoint.instance_key(self.instance_id))
            await rt.store.delete(self.endpoint.model_key(self.instance_id))

    async def register(self) -> None:
        rt = self.endpoint.runtime
        await rt.store.put(self.endpoint.instance_key(self.instance_id), registry.encode(self.instance))
        self.registered = True

    def inflight(self) -> int:
        entry = self.endpoint.runtime.server.endpoints.get(self.path)
        return 0 if entry is None else entry.inflight

    async def wait_idle(self) -> None:
        entry = self.endpoint.runtime.server.endpoints.get(self.path)
        if entry is not None:
            await entry.idle.wait()


class Endpoint:
    def __init__(self, component: Component, name: str) -> None:
        self.component_ = component
        self.runtime = component.runtime
        self.namespace = component.namespace.name
        self.component = component.name
        self.name = name

    @property
    def url(self) -> str:
        return f"dyn://{self.namespace}.{self.component}.{self.name}"

    def instance_key(self, instance_id: int) -> str:
        return registry.instance_key(self.namespace, self.component, self.name, instance_id)

    def model_key(self, instance_id: int) -> str:
        return registry.model_key(self.namespace, self.component, self.name, instance_id)

    async def start_serving(
        self,
        handler: Handler,
        *,
        request_type: type | None = None,
        instance_id: int | None = None,
        graceful_shutdown: bool = True,
    ) -> ServedEndpoint:
        """Register ``handler`` and advertise the instance; returns at once."""
        rt = self.runtime
        server = await rt.ensure_server()
        iid = instance_id if instance_id is not None else rt.instance_id
        inst = registry.Instance(self.namespace, self.component, self.name, iid, {server.kind: server.address})
        decode = (msgspec.msgpack.Decoder(request_type).decode if request_type is not None
                  else msgspec.msgpack.Decoder().decode)
        served = ServedEndpoint(self, inst, graceful_shutdown)
        server.register(served.path, handler, decode)
        await served.register()
        rt.served.append(served)
        logger.info("serving %s as instance %x on %s", self.url, iid, server.address)
        return served

    async def serve_endpoint(self, handler: Handler, **kwargs: Any) -> None:
        """Serve until the runtime shuts down (SIGTERM/SIGINT with signal handlers installed)."""
        await self.start_serving(handler, **kwargs)
        await self.runtime.wait_for_shutdown()

    async def register_model(self, card: Any, instance_id: int | None = None) -> None:
        """Advertise a model card for an instance of this endpoint (frontends watch these)."""
        iid = instance_id if instance_id is not None else self.runtime.instance_id
        card_obj = msgspec.to_builtins(card)
        entry = registry.ModelEntry(self.namespace, self.component, self.name, iid, card_obj)
        await self.runtime.store.put(self.model_key(iid), registry.encode(entry))

    async def client(self, response_type: type | None = None,
                     merge: Callable[[Any, Any], Any] | None = None) -> Client:
        """``merge(a, b)`` may fold consecutive response items into one when the consumer lags."""
        client = Client(self, response_type, merge)
        await client.start()
        return client


async def _never() -> None:
    await asyncio.Event().wait()
