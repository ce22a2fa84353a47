"""ZMQ event plane: no server. Each publisher binds its own PUB socket and advertises it in discovery;
each subscriber has one SUB socket that connects to every advertised publisher of its topic.

A subscriber that connects after a publisher started misses what was sent before (the ZMQ slow
joiner); its first message from that publisher is accepted without a gap report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from dynamo.runtime.discovery import registry
from dynamo.runtime.event_plane.base import EventPlane, EventPublisher, EventSubscriber
from dynamo.runtime.event_plane.envelope import (
    Envelope,
    GapCallback,
    InvalidEvent,
    zmq_envelope,
    zmq_frames,
    zmq_header,
)
from dynamo.runtime.host_address import advertised_host

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)

TRANSPORT = "zmq"
# Deep enough that a 10k-event burst to a subscriber that is briefly busy is queued, not dropped.
HIGH_WATER_MARK = 100_000
DEFAULT_HOST = "127.0.0.1"
# Plain ints: flag arithmetic on pyzmq's enums costs more than the send itself.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)


def bind_host() -> str:
    return os.environ.get("DYN_EVENT_PLANE_HOST") or DEFAULT_HOST


def _advertised_host(host: str) -> str:
    # Bound on every interface: advertise one that other hosts can reach.
    return advertised_host(host)


def _url(host: str, port: str) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class ZmqEventPublisher(EventPublisher):
    transport = TRANSPORT

    def __init__(self, plane: ZmqEventPlane, namespace: str, component: str | None, topic: str,
                 publisher_id: int) -> None:
        super().__init__(plane.runtime, namespace, component, topic, publisher_id)
        self._plane = plane
        self._topic_bytes = self.subject.encode()
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self.address = ""

    async def _open(self) -> None:
        host = self._plane.host
        sock = self._plane.context.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.LINGER, 0)
        if ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        bind = "tcp://*:*" if host in ("0.0.0.0", "*", "") else _url(host, "*")
        sock.bind(bind)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        port = endpoint.rsplit(":", 1)[1]
        self.address = _url(_advertised_host(host), port)
        self._sock = sock
        # A plain socket on the same handle, for calls that need no waiting.
        self._sync = zmq.Socket.shadow(sock.underlying)

    def _channel_record(self) -> registry.EventChannel:
        return self.channel(address=self.address)

    async def _send(self, envelope: Envelope) -> bool:
        sync = self._sync
        if sync is None or sync.closed:
            return False
        try:
            # PUB never blocks (past the high-water mark ZMQ drops, and subscribers see a gap), so the
            # plain non-blocking send is enough and skips the asyncio wrapper's per-call futures.
            topic, publisher, sequence, frame = zmq_frames(self._topic_bytes, envelope)
            send = sync.send
            send(topic, _NOBLOCK_MORE)
            send(publisher, _NOBLOCK_MORE)
            send(sequence, _NOBLOCK_MORE)
            send(frame, _NOBLOCK)
        except zmq.ZMQError as exc:
            logger.warning("zmq publish on %s failed: %s", self.subject, exc)
            return False
        return True

    async def _close_transport(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = self._sync = None


class ZmqEventSubscriber(EventSubscriber):
    transport = TRANSPORT

    def __init__(self, plane: ZmqEventPlane, namespace: str, component: str | None, topic: str,
                 on_gap: GapCallback | None) -> None:
        super().__init__(plane.runtime, namespace, component, topic, on_gap)
        self._plane = plane
        self._topic_bytes = self.subject.encode()
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self._connected: dict[str, int] = {}

    async def _open(self) -> None:
        sock = self._plane.context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)
        # Everything is accepted and the topic frame checked here, so stray traffic is counted.
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock = sock
        # A plain socket on the same handle: drains queued messages without per-call futures.
        self._sync = zmq.Socket.shadow(sock.underlying)

    def connected_addresses(self) -> list[str]:
        return list(self._connected)

    def _channel_added(self, channel: registry.EventChannel) -> None:
        if channel.transport != TRANSPORT or not channel.address or self._sock is None:
            return
        count = self._connected.get(channel.address, 0)
        if count == 0:
            try:
                self._sock.connect(channel.address)
            except zmq.ZMQError as exc:
                logger.warning("cannot connect to event publisher %s: %s", channel.address, exc)
                return
        self._connected[channel.address] = count + 1

    def _channel_removed(self, channel: registry.EventChannel) -> None:
        count = self._connected.get(channel.address, 0)
        if count == 0:
            return
        if count > 1:
            self._connected[channel.address] = count - 1
            return
        del self._connected[channel.address]
        if self._sock is not None and not self._sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(channel.address)

    async def _receive(self) -> Envelope | None:
        topic = self._topic_bytes
        while True:
            sock = self._sock
            sync = self._sync
            if sock is None or sync is None or self.closed:
                return None
            try:
                # Drain what is already queued without the asyncio wrapper; wait only when empty.
                frames = sync.recv_multipart(_NOBLOCK)
            except zmq.Again:
                frames = None
            except zmq.ZMQError:
                if self.closed:
                    return None
                raise
            if frames is None:
                try:
                    frames = await sock.recv_multipart()
                except asyncio.CancelledError:
                    # close() cancels the pending receive; a cancel of this task itself propagates.
                    if self.closed and not _task_cancelling():
                        return None
                    raise
                except zmq.ZMQError:
                    if self.closed:
                        return None
                    raise
            try:
                publisher_id, sequence = zmq_header(frames)
                if frames[0] != topic:
                    raise InvalidEvent(f"topic frame {frames[0][:64]!r} is not {topic!r}")
                envelope = zmq_envelope(frames[3])
                if envelope.publisher_id != publisher_id or envelope.sequence != sequence:
                    raise InvalidEvent("routing frames disagree with the envelope")
            except InvalidEvent as exc:
                self._invalid(exc)
                continue
            return envelope

    async def _close_transport(self) -> None:
        if self._sock is not None:
            sock, self._sock, self._sync = self._sock, None, None
            sock.close(linger=0)
        self._connected.clear()


class ZmqEventPlane(EventPlane):
    kind = TRANSPORT

    def __init__(self, runtime: DistributedRuntime, host: str | None = None) -> None:
        super().__init__(runtime)
        self.host = host or bind_host()
        self.context = zmq.asyncio.Context()

    async def _make_publisher(self, namespace: str, component: str | None, topic: str,
                              publisher_id: int) -> ZmqEventPublisher:
        return ZmqEventPublisher(self, namespace, component, topic, publisher_id)

    async def _make_subscriber(self, namespace: str, component: str | None, topic: str,
                               on_gap: GapCallback | None) -> ZmqEventSubscriber:
        return ZmqEventSubscriber(self, namespace, component, topic, on_gap)

    async def _close_plane(self) -> None:
        self.context.destroy(linger=0)


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
