"""TCP request plane: multiplexed request/response streams on persistent connections (DESIGN §4).

One server per process serves every endpoint instance of that process; one client connection per
(process, server address) carries any number of concurrent streams. The server acknowledges a request
only after admitting it; an overloaded server answers ``ResourceExhausted`` before any data. A lost
connection fails every open stream with ``Disconnected`` (the migration trigger); so does a peer that
falls silent, caught by the heartbeat (``heartbeat.py``). Malformed bytes close only the offending
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from dynamo.runtime import errors
from dynamo.runtime.component_metrics import ComponentMetrics
from dynamo.runtime.host_address import advertised_host
from dynamo.runtime.request_plane.codec import (
    KILL,
    PING,
    PING_BYTES,
    PONG,
    PONG_BYTES,
    REQ,
    STOP,
    Frame,
    FrameReader,
    FrameTooLarge,
    decode_frame,
    encode_body,
    encode_frame,
)
from dynamo.runtime.request_plane.heartbeat import Heartbeat, HeartbeatSettings, set_keepalive
from dynamo.runtime.request_plane.serving import EndpointEntry, Handler, Peer, ServerCore
from dynamo.runtime.request_plane.settings import env_float, env_int
from dynamo.runtime.request_plane.stream import ResponseStream

__all__ = ["ResponseStream", "TcpClient", "TcpServer"]

logger = logging.getLogger(__name__)

def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ----------------------------------------------------------------------------------------------
# server


class _ServerConnection(asyncio.Protocol, Peer):
    def __init__(self, server: TcpServer) -> None:
        Peer.__init__(self)
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.heartbeat = Heartbeat(server.heartbeat, self._ping, self._peer_silent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport
        self.peer = str(transport.get_extra_info("peername"))
        _nodelay(transport)
        set_keepalive(transport.get_extra_info("socket"), self.server.heartbeat)
        self.server.connections.add(self)
        self.heartbeat.start()

    def _ping(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(PING_BYTES)

    def _peer_silent(self, reason: str) -> None:
        # The client is gone without a FIN (host down, partition, frozen): stop generating for it.
        self.abort(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.heartbeat.stop()
        self.server.connections.discard(self)
        self.abort_all()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    def send(self, frame: Frame) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(encode_frame(frame))

    def abort(self, reason: str) -> None:
        logger.warning("request plane: closing connection from %s: %s", self.peer, reason)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.reader.pending():
            logger.warning("request plane: %s closed mid-frame (%d bytes pending)", self.peer, self.reader.pending())
        return None

    def data_received(self, data: bytes) -> None:
        self.heartbeat.seen()
        try:
            payloads = self.reader.feed(data)
        except FrameTooLarge as exc:
            self.abort(str(exc))
            return
        for payload in payloads:
            try:
                frame = decode_frame(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.abort(f"malformed frame: {exc}")
                return
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        t = frame.t
        if t == REQ:
            self.server.core.admit(self, frame)
        elif t == STOP or t == KILL:
            self.control(frame)
        elif t == PING:
            if not self.closed and self.transport is not None:
                self.transport.write(PONG_BYTES)
        elif t != PONG:  # a pong needs nothing more: data_received already recorded the peer alive
            self.abort(f"unexpected frame type {t!r}")


class TcpServer:
    """Serves every endpoint instance registered by this process on one listening socket."""

    kind = "tcp"

    def __init__(self, host: str | None = None, port: int | None = None,
                 metrics: ComponentMetrics | None = None) -> None:
        #: the interface listened on; ``address`` is what goes into discovery (``advertise_host``)
        self.host = host or os.environ.get("DYN_TCP_RPC_HOST") or "127.0.0.1"
        self.advertise_host = advertised_host(self.host, os.environ.get("DYN_TCP_RPC_ADVERTISE_HOST"))
        self.port = port if port is not None else env_int("DYN_TCP_RPC_PORT", 0)
        self.core = ServerCore(env_int("DYN_TCP_WORKER_POOL_SIZE", 1500),
                               env_int("DYN_TCP_WORK_QUEUE_SIZE", 6000), metrics)
        self.endpoints = self.core.endpoints
        self.heartbeat = HeartbeatSettings.from_env()
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        """``host:port`` that clients dial: never a wildcard (see ``host_address``)."""
        return f"{self.advertise_host}:{self.port}"

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("request plane listening on %s, advertised as %s", self.bind_address, self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    def register(self, path: str, handler: Handler, decode: Callable[[bytes], Any]) -> EndpointEntry:
        return self.core.register(path, handler, decode)

    def unregister(self, path: str) -> None:
        self.core.unregister(path)

    @property
    def inflight(self) -> int:
        return self.core.inflight


# ----------------------------------------------------------------------------------------------
# client


class _ClientConnection(asyncio.Protocol):
    def __init__(self, address: str, on_lost: Callable[[_ClientConnection], None],
                 heartbeat: HeartbeatSettings) -> None:
        self.address = address
        self._on_lost = on_lost
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, ResponseStream] = {}
        self._next_sid = 1
        self.closed = False
        self._settings = heartbeat
        self.heartbeat = Heartbeat(heartbeat, self._ping, self._peer_silent)
        self._lost_reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport
        _nodelay(transport)
        set_keepalive(transport.get_extra_info("socket"), self._settings)
        self.heartbeat.start()

    def _ping(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(PING_BYTES)

    def _peer_silent(self, reason: str) -> None:
        # The server is gone without a FIN (host down, partition, frozen): fail its streams so they
        # migrate, and drop the connection so the pool reconnects (or routes around it).
        logger.warning("request plane: dropping connection to %s: %s", self.address, reason)
        self._lost_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.heartbeat.stop()
        self._on_lost(self)
        why = f": {self._lost_reason}" if self._lost_reason else ""
        for stream in list(self.streams.values()):
            stream._finish(errors.Disconnected(f"connection to {self.address} lost{why}"))
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        self.heartbeat.seen()
        try:
            payloads = self.reader.feed(data)
            for payload in payloads:
                frame = decode_frame(payload)
                stream = self.streams.get(frame.sid)
                if stream is not None:
                    stream._on_frame(frame)
                elif frame.t == PING and self.transport is not None and not self.closed:
                    self.transport.write(PONG_BYTES)
        except (FrameTooLarge, msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.error("request plane: bad frame from %s: %s", self.address, exc)
            if self.transport is not None:
                self.transport.abort()

    def send(self, frame: Frame) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(encode_frame(frame))

    def open_stream(self, path: str, body: msgspec.Raw, headers: dict[str, str] | None,
                    decode: Callable[[bytes], Any], merge: Callable[[Any, Any], Any] | None = None,
                    ) -> ResponseStream:
        if self.closed:
            raise errors.Disconnected(f"connection to {self.address} lost")
        sid = self._next_sid
        self._next_sid += 1
        stream = ResponseStream(self, sid, decode, merge)
        self.streams[sid] = stream
        self.send(Frame(REQ, sid, ep=path, headers=headers, body=body))
        return stream


_generic_decode = msgspec.msgpack.Decoder().decode


class TcpClient:
    """Connection pool of a process: one persistent connection per server address."""

    def __init__(self) -> None:
        self._conns: dict[str, _ClientConnection] = {}
        self._connecting: dict[str, asyncio.Task[_ClientConnection]] = {}
        self.connect_timeout = env_float("DYN_TCP_CONNECT_TIMEOUT", 3.0)
        self.ack_timeout = env_float("DYN_TCP_REQUEST_TIMEOUT", 5.0)
        self.heartbeat = HeartbeatSettings.from_env()
        self.on_disconnect: list[Callable[[str], None]] = []

    async def _connection(self, address: str) -> _ClientConnection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        task = self._connecting.get(address)
        if task is None:
            # The connect belongs to the pool, not to the request that happened to start it: a
            # requester cancelled mid-connect must not leave the others waiting on a dead future.
            task = asyncio.get_running_loop().create_task(self._open(address))
            # Retrieved here so a failure that every requester gave up on is not logged as lost.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._connecting[address] = task
        return await asyncio.shield(task)

    async def _open(self, address: str) -> _ClientConnection:
        try:
            host, _, port = address.rpartition(":")
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _ClientConnection(address, self._lost, self.heartbeat),
                                           host, int(port)),
                    self.connect_timeout,
                )
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                raise errors.CannotConnect(f"cannot connect to {address}: {exc or type(exc).__name__}") from exc
            self._conns[address] = proto
            return proto
        finally:
            self._connecting.pop(address, None)

    def _lost(self, conn: _ClientConnection) -> None:
        if self._conns.get(conn.address) is conn:
            del self._conns[conn.address]
        for cb in self.on_disconnect:
            cb(conn.address)

    async def request(
        self,
        address: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] = _generic_decode,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> ResponseStream:
        """Send a request and wait for its acknowledgement; the returned stream yields response items."""
        conn = await self._connection(address)
        raw = body if isinstance(body, msgspec.Raw) else encode_body(body)
        stream = conn.open_stream(path, raw, headers, decode, merge)
        try:
            await asyncio.wait_for(asyncio.shield(stream._ack), self.ack_timeout)
        except asyncio.TimeoutError as exc:
            stream.cancel(kill=True)
            raise errors.ConnectionTimeout(f"{address} did not acknowledge within {self.ack_timeout}s") from exc
        return stream

    async def close(self) -> None:
        for task in list(self._connecting.values()):
            task.cancel()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()


Waiter = Awaitable[None]
