"""HTTP request plane (``--request-plane http``): one streamed HTTP/1.1 response per request.

The worker process serves ``POST {DYN_HTTP_RPC_ROOT_PATH:-/v1/rpc}/{endpoint path}`` on
``DYN_HTTP_RPC_HOST:DYN_HTTP_RPC_PORT`` (default 127.0.0.1, any free port; advertised host as for TCP,
``DYN_HTTP_RPC_ADVERTISE_HOST``) and registers ``{"http": "http://host:port/v1/rpc"}``. The request
body is the TCP plane's ``req`` frame (msgpack); the response body is the same length-prefixed frames
the TCP plane sends (``codec.py``), first the admission answer: ``200`` with ``ack`` then ``data``...
``end``/``err``; or, refused before any data, ``404`` (unknown endpoint) / ``503`` (overloaded,
``ResourceExhausted``) / ``400`` (malformed) with one ``err`` frame. ``stop``/``kill`` are
``POST {root}/_control/{stream id}`` with the ``x-dynamo-stream`` id the request carried.

Liveness: the worker writes a ``ping`` frame on every open response each ``DYN_TCP_HEARTBEAT_SECS``;
the client fails a stream with ``Disconnected`` when its connection breaks or stays silent for
``DYN_TCP_HEARTBEAT_TIMEOUT_SECS``. The worker kills a stream whose client disconnected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
import msgspec
import uvicorn

from dynamo.runtime import errors
from dynamo.runtime.component_metrics import ComponentMetrics
from dynamo.runtime.host_address import advertised_host
from dynamo.runtime.request_plane.codec import (
    END,
    ERR,
    KILL,
    MAX_FRAME_BYTES,
    PING,
    PING_BYTES,
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

logger = logging.getLogger(__name__)

STREAM_HEADER = "x-dynamo-stream"
CONTENT_TYPE = b"application/x-dynamo-frames"
OUTBOX_HIGH = 4096
_generic_decode = msgspec.msgpack.Decoder().decode
_STATUS_OF_REFUSAL = {"NotFound": 404, "ResourceExhausted": 503, "InvalidArgument": 400}


def root_path() -> str:
    return "/" + (os.environ.get("DYN_HTTP_RPC_ROOT_PATH") or "/v1/rpc").strip("/")


# ----------------------------------------------------------------------------------------------
# server


class _ResponsePeer(Peer):
    """One request's response body: frames queue here and the ASGI handler writes them out."""

    def __init__(self) -> None:
        super().__init__()
        self.out: collections.deque[bytes] = collections.deque()
        self.kick = asyncio.Event()
        self.ended = False  # the handler's end/err frame is queued: the body ends after it

    def send(self, frame: Frame) -> None:
        if self.closed:
            return
        if frame.t == END or frame.t == ERR:
            self.ended = True
        self.out.append(encode_frame(frame))
        if len(self.out) > OUTBOX_HIGH:
            self.paused = True
        self.kick.set()


def _frame_response(status: int, frame: Frame) -> tuple[int, bytes]:
    return status, encode_frame(frame)


class HttpServer:
    """Serves every endpoint instance of this process on one HTTP/1.1 listener (uvicorn, httptools)."""

    kind = "http"

    def __init__(self, host: str | None = None, port: int | None = None,
                 metrics: ComponentMetrics | None = None) -> None:
        self.host = host or os.environ.get("DYN_HTTP_RPC_HOST") or "127.0.0.1"
        self.advertise_host = advertised_host(self.host, os.environ.get("DYN_HTTP_RPC_ADVERTISE_HOST"))
        self.port = port if port is not None else env_int("DYN_HTTP_RPC_PORT", 0)
        self.root = root_path()
        self.core = ServerCore(env_int("DYN_TCP_WORKER_POOL_SIZE", 1500),
                               env_int("DYN_TCP_WORK_QUEUE_SIZE", 6000), metrics)
        self.endpoints = self.core.endpoints
        self.heartbeat = HeartbeatSettings.from_env()
        self.open: dict[str, _ResponsePeer] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"http://{self.advertise_host}:{self.port}{self.root}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux): the ack and the first items are small separate writes,
        # and Nagle would hold each behind the client's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise errors.ConfigError(f"HTTP request plane cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", interface="asgi3",
                                http="httptools", loop="none", timeout_keep_alive=3600,
                                h11_max_incomplete_event_size=MAX_FRAME_BYTES)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the runtime owns signals
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise errors.ConfigError("HTTP request plane server exited during start-up")
            await asyncio.sleep(0.005)  # uvicorn exposes no start-up event; bounded by the check above

    async def close(self) -> None:
        for peer in list(self.open.values()):
            peer.abort_all()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)

    def register(self, path: str, handler: Handler, decode: Callable[[bytes], Any]) -> EndpointEntry:
        return self.core.register(path, handler, decode)

    def unregister(self, path: str) -> None:
        self.core.unregister(path)

    # -- ASGI -------------------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(self.root + "/"):
            await _plain(send, 404 if scope["method"] == "POST" else 405, b"")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_FRAME_BYTES:
                await _frames(send, *_frame_response(413, Frame(ERR, 0, error=errors.InvalidArgument(
                    f"request body exceeds {MAX_FRAME_BYTES} bytes").to_wire())))
                return
            if not message.get("more_body"):
                break
        rest = path[len(self.root) + 1:]
        if rest.startswith("_control/"):
            await self._control(rest[len("_control/"):], bytes(body), send)
            return
        try:
            frame = decode_frame(bytes(body))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await _frames(send, *_frame_response(400, Frame(ERR, 0, error=errors.InvalidArgument(
                f"malformed request frame: {exc}").to_wire())))
            return
        if frame.t != REQ:
            await _frames(send, *_frame_response(400, Frame(ERR, frame.sid, error=errors.InvalidArgument(
                f"expected a 'req' frame, got {frame.t!r}").to_wire())))
            return
        if frame.ep is None:
            frame.ep = rest
        await self._stream(scope, frame, receive, send)

    async def _control(self, stream_id: str, body: bytes, send: Any) -> None:
        peer = self.open.get(stream_id)
        kind = body.decode("latin-1", "replace").strip()
        if kind not in (STOP, KILL):
            await _plain(send, 400, b"control body must be 'stop' or 'kill'")
            return
        if peer is None:
            await _plain(send, 404, b"no such stream")
            return
        for sid in list(peer.tasks):
            peer.control(Frame(kind, sid))
        await _plain(send, 204, b"")

    async def _stream(self, scope: dict[str, Any], frame: Frame, receive: Any, send: Any) -> None:
        peer = _ResponsePeer()
        answers: list[Frame] = []
        self.core.admit(peer, frame, answers.append)
        answer = answers[0]
        if answer.t == ERR:
            status = _STATUS_OF_REFUSAL.get((answer.error or {}).get("type", ""), 500)
            await _frames(send, status, encode_frame(answer))
            return
        stream_id = _header(scope, STREAM_HEADER.encode()) or uuid.uuid4().hex
        self.open[stream_id] = peer
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, peer))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE), (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": encode_frame(answer), "more_body": True})
            await self._pump(peer, send)
        finally:
            watcher.cancel()
            self.open.pop(stream_id, None)
            if peer.tasks:  # the response ended early (client gone, write failed): stop the handler
                peer.abort_all()

    async def _pump(self, peer: _ResponsePeer, send: Any) -> None:
        interval = self.heartbeat.interval if self.heartbeat.enabled else None
        out = peer.out
        while True:
            if not out:
                if peer.closed:
                    return
                peer.kick.clear()
                try:
                    await asyncio.wait_for(peer.kick.wait(), interval)
                except asyncio.TimeoutError:
                    out.append(PING_BYTES)
                continue
            chunk = b"".join(out)
            last = peer.ended
            out.clear()
            if peer.paused:
                peer.paused = False
                peer.wake()
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return


async def _watch_disconnect(receive: Any, peer: _ResponsePeer) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            peer.abort_all()
            return


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def _frames(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", CONTENT_TYPE)]})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------------------------
# client
#
# A small HTTP/1.1 client of our own (httptools parses the responses): the general-purpose clients
# cost more per request than the rest of the plane, and their pools slow down with many concurrent
# streams. One connection carries one request at a time and is kept alive for the next.


class _Exchange:
    """What one request on a connection does with its response."""

    def on_headers(self, status: int, content_type: str) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_lost(self, reason: str) -> None: ...


class _StreamExchange(_Exchange):
    """A request whose response body is frames for one ``ResponseStream``; owner of that stream."""

    def __init__(self, client: HttpClient, address: str, stream_id: str) -> None:
        self.client = client
        self.address = address
        self.stream_id = stream_id
        self.streams: dict[int, ResponseStream] = {}
        self.stream: ResponseStream | None = None
        self.conn: _HttpConnection | None = None
        self.reader = FrameReader()
        self.foreign: bytearray | None = None  # body of a response that is not ours (an error page)
        self.status = 0

    # -- ResponseStream's owner
    def send(self, frame: Frame) -> None:
        if frame.t == KILL:
            # Dropping the connection is the kill: the worker aborts the handler of a vanished client.
            if self.conn is not None:
                self.conn.abort()
        elif frame.t == STOP:
            asyncio.get_running_loop().create_task(self.client._control(self.address, self.stream_id, STOP))

    # -- the connection's
    def on_headers(self, status: int, content_type: str) -> None:
        self.status = status
        if content_type != CONTENT_TYPE.decode():
            self.foreign = bytearray()

    def on_body(self, data: bytes) -> None:
        if self.foreign is not None:
            if len(self.foreign) < 1024:
                self.foreign += data
            return
        stream = self.stream
        try:
            for payload in self.reader.feed(data):
                frame = decode_frame(payload)
                if frame.t != PING and stream is not None:
                    stream._on_frame(frame)
        except (FrameTooLarge, msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.error("request plane (http): bad frame from %s: %s", self.address, exc)
            if self.conn is not None:
                self.conn.abort(f"bad frame from {self.address}: {exc}")

    def on_complete(self) -> None:
        stream = self.stream
        if stream is None or stream._done:
            return
        if self.foreign is not None:
            text = bytes(self.foreign[:200]).decode("utf-8", "replace")
            stream._finish(errors.Unavailable(f"{self.address} answered HTTP {self.status}: {text!r}"))
        else:
            self.on_lost(f"response from {self.address} ended mid-stream")

    def on_lost(self, reason: str) -> None:
        stream = self.stream
        if stream is None or stream._done:
            return
        if stream.cancelled:
            stream._finish(None)
            return
        stream._finish(errors.Disconnected(reason))
        for cb in self.client.on_disconnect:
            cb(self.address)


class _StatusExchange(_Exchange):
    """A request whose response only matters by its status (stop control)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.status = 0

    def on_headers(self, status: int, content_type: str) -> None:
        self.status = status

    def on_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.status)

    def on_lost(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(errors.Disconnected(reason))


class _HttpConnection(asyncio.Protocol):
    def __init__(self, pool: list[_HttpConnection], heartbeat: HeartbeatSettings,
                 on_closed: Callable[[_HttpConnection], None]) -> None:
        self.pool = pool
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self._content_type = ""
        self._lost_reason = ""
        self.heartbeat = Heartbeat(heartbeat, lambda: None, self._silent)

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock, self.heartbeat.settings)

    def data_received(self, data: bytes) -> None:
        self.heartbeat.seen()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(f"malformed HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.heartbeat.stop()
        with contextlib.suppress(ValueError):
            self.pool.remove(self)
        self._on_closed(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.on_lost(self._lost_reason or f"connection lost{f': {exc}' if exc else ''}")

    # -- httptools
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.on_headers(self.parser.get_status_code(), self._content_type)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_body(body)

    def on_message_complete(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.heartbeat.stop()
        self._content_type = ""
        keep = self.parser.should_keep_alive()
        if exchange is not None:
            exchange.on_complete()
        if keep and not self.closed:
            self.pool.append(self)
        else:
            self.abort()

    # --
    def start(self, exchange: _Exchange, request: bytes) -> None:
        self.exchange = exchange
        if isinstance(exchange, _StreamExchange):
            exchange.conn = self
            self.heartbeat.start()
        assert self.transport is not None
        self.transport.write(request)

    def _silent(self, reason: str) -> None:
        self.abort(reason)

    def abort(self, reason: str = "") -> None:
        if reason:
            self._lost_reason = reason
        if self.transport is not None and not self.closed:
            self.transport.abort()


class HttpClient:
    """Request-plane client over HTTP/1.1: per worker, a pool of keep-alive connections."""

    def __init__(self) -> None:
        self.on_disconnect: list[Callable[[str], None]] = []
        self.ack_timeout = env_float("DYN_TCP_REQUEST_TIMEOUT", 5.0)
        self.connect_timeout = env_float("DYN_TCP_CONNECT_TIMEOUT", 3.0)
        self.heartbeat = HeartbeatSettings.from_env()
        self._idle: dict[tuple[str, int], list[_HttpConnection]] = {}
        self._targets: dict[str, tuple[str, int, str]] = {}
        self._all: set[_HttpConnection] = set()

    def _target(self, address: str) -> tuple[str, int, str]:
        target = self._targets.get(address)
        if target is None:
            url = urlsplit(address)
            if url.scheme != "http" or not url.hostname or url.port is None:
                raise errors.InvalidArgument(f"not an http request-plane address: {address!r}")
            target = self._targets[address] = (url.hostname, url.port, url.path.rstrip("/"))
        return target

    async def _connection(self, host: str, port: int) -> _HttpConnection:
        idle = self._idle.setdefault((host, port), [])
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _HttpConnection(idle, self.heartbeat, self._all.discard), host, port),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise errors.CannotConnect(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
        self._all.add(conn)
        return conn

    async def _send(self, address: str, target_path: str, body: bytes, exchange: _Exchange,
                    extra_headers: str = "") -> _HttpConnection:
        host, port, _ = self._target(address)
        conn = await self._connection(host, port)
        head = (f"POST {target_path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: {CONTENT_TYPE.decode()}\r\n"
                f"{extra_headers}content-length: {len(body)}\r\n\r\n")
        conn.start(exchange, head.encode("latin-1") + body)
        return conn

    async def request(
        self,
        address: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] = _generic_decode,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> ResponseStream:
        stream_id = uuid.uuid4().hex
        exchange = _StreamExchange(self, address, stream_id)
        stream = ResponseStream(exchange, 1, decode, merge)
        exchange.streams[1] = stream
        exchange.stream = stream
        raw = body if isinstance(body, msgspec.Raw) else encode_body(body)
        payload = encode_frame(Frame(REQ, 1, ep=path, headers=headers, body=raw))[4:]
        root = self._target(address)[2]
        await self._send(address, f"{root}/{quote(path, safe='/.')}", payload, exchange,
                         f"{STREAM_HEADER}: {stream_id}\r\n")
        try:
            await asyncio.wait_for(asyncio.shield(stream._ack), self.ack_timeout)
        except asyncio.TimeoutError as exc:
            stream.cancel(kill=True)
            raise errors.ConnectionTimeout(f"{address} did not acknowledge within {self.ack_timeout}s") from exc
        return stream

    async def _control(self, address: str, stream_id: str, kind: str) -> None:
        exchange = _StatusExchange()
        root = self._target(address)[2]
        with contextlib.suppress(errors.DynamoError, asyncio.TimeoutError):
            await self._send(address, f"{root}/_control/{stream_id}", kind.encode(), exchange)
            await asyncio.wait_for(exchange.done, self.ack_timeout)

    async def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()
