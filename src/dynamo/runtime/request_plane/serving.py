"""The server half every request plane shares: admission, running handlers, stop/kill, metrics.

A transport (tcp, nats, http) turns its bytes into :class:`Frame` objects and hands each ``req`` to
:meth:`ServerCore.admit` together with a :class:`Peer`: the thing frames of that stream go back
through (a TCP connection, a NATS reply subject, an HTTP response body). ``stop``/``kill`` frames go
to :meth:`Peer.control`. Admission is bounded: beyond ``max_workers + max_queued`` requests in
flight the request is refused with ``ResourceExhausted`` before any data, and only
``max_workers`` handlers run at once (the rest wait, in order, for a slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dynamo.runtime import errors
from dynamo.runtime.component_metrics import ComponentMetrics, EndpointMetrics, labels_from_path
from dynamo.runtime.context import RequestContext
from dynamo.runtime.request_plane.codec import ACK, DATA, END, ERR, KILL, Frame, encode_body

logger = logging.getLogger(__name__)

Handler = Callable[[Any, RequestContext], AsyncIterator[Any]]


@dataclass
class EndpointEntry:
    handler: Handler
    decode: Callable[[bytes], Any]
    metrics: EndpointMetrics | None = None
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Peer:
    """Where the frames of a client's streams go; subclasses implement ``send`` (and flow control)."""

    def __init__(self) -> None:
        self.closed = False
        self.paused = False
        self.tasks: dict[int, tuple[asyncio.Task[None], RequestContext]] = {}
        self._drain: asyncio.Future[None] | None = None

    def send(self, frame: Frame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def control(self, frame: Frame) -> None:
        """Apply a ``stop``/``kill`` frame to the stream it names."""
        entry = self.tasks.get(frame.sid)
        if entry is not None:
            task, ctx = entry
            if frame.t == KILL:
                ctx.kill()
                task.cancel()
            else:
                ctx.stop()

    def abort_all(self) -> None:
        """The client is gone: nobody will read these streams, so abort their handlers."""
        self.closed = True
        for task, ctx in list(self.tasks.values()):
            ctx.kill()
            task.cancel()
        self.tasks.clear()
        self.wake()

    def wake(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self) -> None:
        if self.paused and not self.closed:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain


class ServerCore:
    """Endpoint table and admission of one process's request-plane server."""

    def __init__(self, max_workers: int, max_queued: int, metrics: ComponentMetrics | None = None) -> None:
        self.max_workers = max_workers
        self.max_queued = max_queued
        self.metrics = metrics
        self.endpoints: dict[str, EndpointEntry] = {}
        self._admitted = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def inflight(self) -> int:
        return self._admitted

    def register(self, path: str, handler: Handler, decode: Callable[[bytes], Any]) -> EndpointEntry:
        metrics = self.metrics.for_endpoint(*labels_from_path(path)) if self.metrics is not None else None
        entry = EndpointEntry(handler, decode, metrics)
        entry.idle.set()
        self.endpoints[path] = entry
        return entry

    def unregister(self, path: str) -> None:
        self.endpoints.pop(path, None)

    def admit(self, peer: Peer, frame: Frame, answer: Callable[[Frame], None] | None = None) -> None:
        """Admit a ``req`` frame: ``ack`` and run it, or refuse it with an ``err`` before any data.

        ``answer`` carries the ack or refusal where the transport answers admission apart from the
        stream (NATS replies to the request); by default it goes to ``peer`` like the data.
        """
        sid = frame.sid
        reply = answer or peer.send
        entry = self.endpoints.get(frame.ep or "")
        if entry is None:
            reply(Frame(ERR, sid, error=errors.NotFound(f"unknown endpoint {frame.ep!r}").to_wire()))
            return
        if self._admitted >= self.max_workers + self.max_queued:
            reply(Frame(ERR, sid, error=errors.ResourceExhausted(
                f"server overloaded: {self._admitted} requests in flight").to_wire()))
            return
        headers = frame.headers or {}
        ctx = RequestContext(headers.get("request-id"), headers)
        self._admitted += 1
        entry.inflight += 1
        entry.idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(peer, entry, frame, ctx))
        peer.tasks[sid] = (task, ctx)
        reply(Frame(ACK, sid))

    async def _run(self, peer: Peer, entry: EndpointEntry, frame: Frame, ctx: RequestContext) -> None:
        sid = frame.sid
        agen: AsyncIterator[Any] | None = None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_workers)
        metrics = entry.metrics
        started = metrics.started(len(frame.body)) if metrics is not None else 0.0
        sent_bytes = 0
        error_type: str | None = None
        try:
            async with self._slots:
                request = entry.decode(frame.body) if len(frame.body) else None
                agen = entry.handler(request, ctx)
                async for item in agen:
                    if peer.closed:
                        break
                    body = encode_body(item)
                    sent_bytes += len(body)
                    peer.send(Frame(DATA, sid, body=body))
                    if peer.paused:
                        await peer.drain()
                    if ctx.is_stopped():
                        break
                if not ctx.is_killed():
                    peer.send(Frame(END, sid))
        except asyncio.CancelledError:
            pass
        except errors.DynamoError as exc:
            error_type = type(exc).__name__
            peer.send(Frame(ERR, sid, error=exc.to_wire()))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error_type = "InvalidArgument"
            peer.send(Frame(ERR, sid, error=errors.InvalidArgument(f"invalid request body: {exc}").to_wire()))
        except Exception as exc:
            error_type = "Internal"
            logger.exception("handler for %s failed", frame.ep)
            peer.send(Frame(ERR, sid, error=errors.Internal(f"{type(exc).__name__}: {exc}").to_wire()))
        finally:
            if agen is not None:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await aclose()
            peer.tasks.pop(sid, None)
            self._admitted -= 1
            entry.inflight -= 1
            if entry.inflight == 0:
                entry.idle.set()
            if metrics is not None:
                metrics.finished(started, sent_bytes, error_type, ctx.is_stopped())
