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
import uuid
from collections.abc import Callable
from typing import Any

import httpx
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
from dynamo.runtime.request_plane.heartbeat import HeartbeatSettings
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
        import socket

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


class _Call:
    """Owner of one request's stream (``ResponseStream`` sends stop/kill through it)."""

    def __init__(self, client: HttpClient, address: str, stream_id: str) -> None:
        self.client = client
        self.address = address
        self.stream_id = stream_id
        self.streams: dict[int, ResponseStream] = {}
        self.response: httpx.Response | None = None

    def send(self, frame: Frame) -> None:
        if frame.t in (STOP, KILL):
            asyncio.get_running_loop().create_task(self.client._control(self.address, self.stream_id, frame.t))
            if frame.t == KILL and self.response is not None:
                asyncio.get_running_loop().create_task(self.response.aclose())


class HttpClient:
    """Request-plane client over HTTP/1.1: a keep-alive connection pool, one connection per open stream."""

    def __init__(self) -> None:
        self.on_disconnect: list[Callable[[str], None]] = []
        self.ack_timeout = env_float("DYN_TCP_REQUEST_TIMEOUT", 5.0)
        self.connect_timeout = env_float("DYN_TCP_CONNECT_TIMEOUT", 3.0)
        self.heartbeat = HeartbeatSettings.from_env()
        read_timeout = self.heartbeat.timeout if self.heartbeat.enabled else None
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=self.connect_timeout, read=read_timeout, write=self.ack_timeout,
                                  pool=self.ack_timeout),
            limits=httpx.Limits(max_connections=env_int("DYN_HTTP_POOL_SIZE", 2048),
                                max_keepalive_connections=env_int("DYN_HTTP_POOL_SIZE", 2048)),
        )
        self._tasks: set[asyncio.Task[None]] = set()

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
        call = _Call(self, address, stream_id)
        stream = ResponseStream(call, 1, decode, merge)
        call.streams[1] = stream
        raw = body if isinstance(body, msgspec.Raw) else encode_body(body)
        payload = encode_frame(Frame(REQ, 1, ep=path, headers=headers, body=raw))[4:]
        request = self.http.build_request("POST", f"{address}/{path}", content=payload,
                                          headers={STREAM_HEADER: stream_id, "content-type": CONTENT_TYPE.decode()})
        try:
            response = await asyncio.wait_for(self.http.send(request, stream=True),
                                              self.ack_timeout + self.connect_timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise errors.CannotConnect(f"cannot connect to {address}: {exc or type(exc).__name__}") from exc
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            raise errors.ConnectionTimeout(f"{address} did not answer within {self.ack_timeout}s") from exc
        except httpx.TransportError as exc:
            raise errors.Disconnected(f"connection to {address} lost: {exc or type(exc).__name__}") from exc
        if response.headers.get("content-type") != CONTENT_TYPE.decode():
            # Not our server's answer (a proxy's error page, a wrong URL): no frames to read.
            text = (await response.aread())[:200].decode("utf-8", "replace")
            await response.aclose()
            raise errors.Unavailable(f"{address} answered HTTP {response.status_code}: {text!r}")
        call.response = response
        task = asyncio.get_running_loop().create_task(self._read(call, response, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(stream._ack), self.ack_timeout)
        except asyncio.TimeoutError as exc:
            stream.cancel(kill=True)
            raise errors.ConnectionTimeout(f"{address} did not acknowledge within {self.ack_timeout}s") from exc
        return stream

    async def _read(self, call: _Call, response: httpx.Response, stream: ResponseStream) -> None:
        reader = FrameReader()
        try:
            async for chunk in response.aiter_raw():
                for payload in reader.feed(chunk):
                    frame = decode_frame(payload)
                    if frame.t == PING:
                        continue
                    stream._on_frame(frame)
            if not stream._done:
                self._lost(call, stream, f"connection to {call.address} ended mid-stream")
        except (FrameTooLarge, msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.error("request plane (http): bad frame from %s: %s", call.address, exc)
            self._lost(call, stream, f"bad frame from {call.address}: {exc}")
        except httpx.ReadTimeout:
            self._lost(call, stream, f"no frame from {call.address} for {self.heartbeat.timeout:g}s "
                                     "(heartbeat timeout)")
        except (httpx.TransportError, httpx.StreamError) as exc:
            if not stream._done:
                self._lost(call, stream, f"connection to {call.address} lost: {exc or type(exc).__name__}")
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    def _lost(self, call: _Call, stream: ResponseStream, reason: str) -> None:
        if stream._done or stream.cancelled:
            stream._finish(None)
            return
        stream._finish(errors.Disconnected(reason))
        for cb in self.on_disconnect:
            cb(call.address)

    async def _control(self, address: str, stream_id: str, kind: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(f"{address}/_control/{stream_id}", content=kind.encode())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.http.aclose()
