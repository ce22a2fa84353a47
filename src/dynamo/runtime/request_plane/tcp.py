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
import collections
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dynamo.runtime import errors
from dynamo.runtime.context import RequestContext
from dynamo.runtime.host_address import advertised_host
from dynamo.runtime.request_plane.codec import (
    ACK,
    DATA,
    END,
    ERR,
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

logger = logging.getLogger(__name__)

Handler = Callable[[Any, RequestContext], AsyncIterator[Any]]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable {name}={raw!r} is not a number") from exc


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ----------------------------------------------------------------------------------------------
# server


@dataclass
class EndpointEntry:
    handler: Handler
    decode: Callable[[bytes], Any]
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.tasks: dict[int, tuple[asyncio.Task[None], RequestContext]] = {}
        self.peer = "?"
        self.closed = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
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
        self.closed = True
        self.heartbeat.stop()
        self.server.connections.discard(self)
        # The client is gone: nobody will read these streams, so abort their handlers.
        for task, ctx in list(self.tasks.values()):
            ctx.kill()
            task.cancel()
        self.tasks.clear()
        self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self) -> None:
        if self._paused and not self.closed:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

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
            self.server._admit(self, frame)
        elif t == STOP or t == KILL:
            entry = self.tasks.get(frame.sid)
            if entry is not None:
                task, ctx = entry
                if t == KILL:
                    ctx.kill()
                    task.cancel()
                else:
                    ctx.stop()
        elif t == PING:
            if not self.closed and self.transport is not None:
                self.transport.write(PONG_BYTES)
        elif t != PONG:  # a pong needs nothing more: data_received already recorded the peer alive
            self.abort(f"unexpected frame type {t!r}")


class TcpServer:
    """Serves every endpoint instance registered by this process on one listening socket."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        #: the interface listened on; ``address`` is what goes into discovery (``advertise_host``)
        self.host = host or os.environ.get("DYN_TCP_RPC_HOST") or "127.0.0.1"
        self.advertise_host = advertised_host(self.host, os.environ.get("DYN_TCP_RPC_ADVERTISE_HOST"))
        self.port = port if port is not None else _env_int("DYN_TCP_RPC_PORT", 0)
        self.max_workers = _env_int("DYN_TCP_WORKER_POOL_SIZE", 1500)
        self.max_queued = _env_int("DYN_TCP_WORK_QUEUE_SIZE", 6000)
        self.heartbeat = HeartbeatSettings.from_env()
        self.endpoints: dict[str, EndpointEntry] = {}
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._admitted = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def address(self) -> str:
        """``host:port`` that clients dial: never a wildcard (see ``host_address``)."""
        return f"{self.advertise_host}:{self.port}"

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.max_workers)
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
        entry = EndpointEntry(handler, decode)
        entry.idle.set()
        self.endpoints[path] = entry
        return entry

    def unregister(self, path: str) -> None:
        self.endpoints.pop(path, None)

    @property
    def inflight(self) -> int:
        return self._admitted

    def _admit(self, conn: _ServerConnection, frame: Frame) -> None:
        sid = frame.sid
        entry = self.endpoints.get(frame.ep or "")
        if entry is None:
            conn.send(Frame(ERR, sid, error=errors.NotFound(f"unknown endpoint {frame.ep!r}").to_wire()))
            return
        if self._admitted >= self.max_workers + self.max_queued:
            conn.send(Frame(ERR, sid, error=errors.ResourceExhausted(
                f"server overloaded: {self._admitted} requests in flight").to_wire()))
            return
        headers = frame.headers or {}
        ctx = RequestContext(headers.get("request-id"), headers)
        self._admitted += 1
        entry.inflight += 1
        entry.idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(conn, entry, frame, ctx))
        conn.tasks[sid] = (task, ctx)
        conn.send(Frame(ACK, sid))

    async def _run(self, conn: _ServerConnection, entry: EndpointEntry, frame: Frame,
                   ctx: RequestContext) -> None:
        sid = frame.sid
        agen: AsyncIterator[Any] | None = None
        assert self._slots is not None
        try:
            async with self._slots:
                request = entry.decode(frame.body) if len(frame.body) else None
                agen = entry.handler(request, ctx)
                async for item in agen:
                    if conn.closed:
                        break
                    conn.send(Frame(DATA, sid, body=encode_body(item)))
                    if conn._paused:
                        await conn.drain()
                    if ctx.is_stopped():
                        break
                if not ctx.is_killed():
                    conn.send(Frame(END, sid))
        except asyncio.CancelledError:
            pass
        except errors.DynamoError as exc:
            conn.send(Frame(ERR, sid, error=exc.to_wire()))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            conn.send(Frame(ERR, sid, error=errors.InvalidArgument(f"invalid request body: {exc}").to_wire()))
        except Exception as exc:
            logger.exception("handler for %s failed", frame.ep)
            conn.send(Frame(ERR, sid, error=errors.Internal(f"{type(exc).__name__}: {exc}").to_wire()))
        finally:
            if agen is not None:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await aclose()
            conn.tasks.pop(sid, None)
            self._admitted -= 1
            entry.inflight -= 1
            if entry.inflight == 0:
                entry.idle.set()


# ----------------------------------------------------------------------------------------------
# client


class ResponseStream:
    """The items of one request's response; iterate with ``async for``; ``cancel()`` to abandon."""

    __slots__ = ("_ack", "_conn", "_decode", "_done", "_error", "_items", "_merge", "_peeked", "_waiter",
                 "cancelled", "sid")

    def __init__(self, conn: _ClientConnection, sid: int, decode: Callable[[bytes], Any],
                 merge: Callable[[Any, Any], Any] | None = None) -> None:
        self._conn = conn
        self.sid = sid
        self._decode = decode
        self._merge = merge
        self._peeked: Any = None
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done = False
        self._error: errors.DynamoError | None = None
        self.cancelled = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        t = frame.t
        if t == DATA:
            self._items.append(frame.body)
            self._wake()
        elif t == ACK:
            if not self._ack.done():
                self._ack.set_result(None)
        elif t == END:
            self._finish(None)
        elif t == ERR:
            self._finish(errors.from_wire(frame.error))

    def _finish(self, error: errors.DynamoError | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self._ack.done():
            if error is not None:
                self._ack.set_exception(error)
            else:
                self._ack.set_result(None)
        self._conn.streams.pop(self.sid, None)
        self._wake()

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._peeked is not None:
                item, self._peeked = self._peeked, None
            elif self._items:
                item = self._decode(self._items.popleft())
            else:
                item = None
            if item is not None:
                merge = self._merge
                if merge is not None:
                    # Items that piled up while the consumer was busy are handed over as one.
                    items = self._items
                    while items:
                        nxt = self._decode(items.popleft())
                        merged = merge(item, nxt)
                        if merged is None:
                            self._peeked = nxt
                            break
                        item = merged
                return item
            if self._done:
                if self._error is not None and not self.cancelled:
                    err, self._error = self._error, None
                    raise err
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def cancel(self, kill: bool = False) -> None:
        """Ask the server to stop (graceful) or kill the stream; further items are discarded."""
        if self._done:
            return
        self.cancelled = True
        self._conn.send(Frame(KILL if kill else STOP, self.sid))
        if kill:
            self._items.clear()
            self._finish(None)


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
        self.connect_timeout = _env_float("DYN_TCP_CONNECT_TIMEOUT", 3.0)
        self.ack_timeout = _env_float("DYN_TCP_REQUEST_TIMEOUT", 5.0)
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
