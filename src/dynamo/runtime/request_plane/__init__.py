"""Request planes: how a request reaches a worker and its response stream comes back.

Three transports carry the same frames (``codec.py``) with the same semantics: ``tcp`` (default; one
multiplexed connection per peer), ``nats`` (per-process subjects through a NATS server) and ``http``
(one streamed HTTP/1.1 response per request). A process *serves* on the one ``--request-plane``
names; as a client it reaches each instance over the transport that instance registered.

Both halves have one small interface, :class:`RequestPlaneServer` and :class:`RequestPlaneClient`;
the admission and handler loop they share is ``serving.py``, the response stream ``stream.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dynamo.runtime import errors

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime
    from dynamo.runtime.request_plane.serving import EndpointEntry, Handler
    from dynamo.runtime.request_plane.stream import ResponseStream

REQUEST_PLANES = ("tcp", "nats", "http")


class RequestPlaneServer(Protocol):
    kind: str  # the key of the instance's ``transport`` record
    endpoints: dict[str, EndpointEntry]

    @property
    def address(self) -> str:
        """What clients dial: ``host:port``, a NATS subject or a URL."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def register(self, path: str, handler: Handler, decode: Callable[[bytes], Any]) -> EndpointEntry: ...

    def unregister(self, path: str) -> None: ...


class RequestPlaneClient(Protocol):
    #: called with the server address when a server is found dead (streams already failed)
    on_disconnect: list[Callable[[str], None]]

    async def request(
        self,
        address: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] = ...,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> ResponseStream:
        """Send a request and wait for its acknowledgement (admission); raises typed errors."""
        ...

    async def close(self) -> None: ...


async def create_server(kind: str, runtime: DistributedRuntime) -> RequestPlaneServer:
    if kind == "tcp":
        from dynamo.runtime.request_plane.tcp import TcpServer

        return TcpServer(metrics=runtime.metrics)
    if kind == "nats":
        from dynamo.runtime.request_plane.nats import NatsServer

        return NatsServer(await runtime.nats_connection(), runtime.instance_id, metrics=runtime.metrics)
    if kind == "http":
        from dynamo.runtime.request_plane.http import HttpServer

        return HttpServer(metrics=runtime.metrics)
    raise errors.ConfigError(f"unknown request plane {kind!r}; choose one of {', '.join(REQUEST_PLANES)}")


async def create_client(kind: str, runtime: DistributedRuntime) -> RequestPlaneClient:
    if kind == "nats":
        from dynamo.runtime.request_plane.nats import NatsClient

        client = NatsClient(await runtime.nats_connection())
        await client.start()
        return client
    if kind == "http":
        from dynamo.runtime.request_plane.http import HttpClient

        return HttpClient()
    if kind == "tcp":
        from dynamo.runtime.request_plane.tcp import TcpClient

        return TcpClient()
    raise errors.Unavailable(f"instance registered on unknown request plane {kind!r}")
