"""NATS event plane: core NATS, fire-and-forget publish of envelope bytes on the topic's subject.

The connection reconnects forever after a server restart and re-subscribes on its own. While it is
disconnected, publishes are dropped (not buffered): their sequence numbers are still consumed, so
subscribers report the outage as a gap rather than receiving stale events late or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.event_plane.base import EventPlane, EventPublisher, EventSubscriber
from dynamo.runtime.event_plane.envelope import (
    Envelope,
    GapCallback,
    InvalidEvent,
    decode_envelope,
    encode_envelope,
)

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)

TRANSPORT = "nats"
DEFAULT_URL = "nats://localhost:4222"
RECONNECT_WAIT_SECS = 0.25
INITIAL_CONNECT_TIMEOUT_SECS = 10.0
# Bounds the events a subscriber holds before its iterator takes them; beyond it they are dropped
# (and show up as gaps) instead of growing memory without limit.
SUBSCRIBER_QUEUE_LIMIT = 1_000_000


def server_url() -> str:
    return os.environ.get("NATS_SERVER") or DEFAULT_URL


async def connect(
    url: str | None = None, *, name: str | None = None, timeout: float = INITIAL_CONNECT_TIMEOUT_SECS
) -> NatsClient:
    """A NATS connection that reconnects forever with a short wait (subscriptions survive).

    Only the first connection is bounded (``timeout``): unlimited reconnect attempts would otherwise
    make a wrong URL hang the caller forever.
    """
    target = url or server_url()
    opened: list[NatsClient] = []

    async def on_error(exc: Exception) -> None:
        logger.debug("nats %s: %s", target, exc)

    async def on_disconnected() -> None:
        if opened and (opened[0].is_closed or opened[0].is_draining):
            return  # our own close()
        logger.warning("nats %s: disconnected; reconnecting", target)

    async def on_reconnected() -> None:
        logger.info("nats %s: reconnected", target)

    try:
        nc = await asyncio.wait_for(nats.connect(
            target,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_SECS,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        ), timeout)
    except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
        raise errors.CannotConnect(f"cannot connect to NATS at {target} (set NATS_SERVER): "
                                  f"{exc or f'no answer within {timeout}s'}") from exc
    opened.append(nc)
    return nc


class NatsEventPublisher(EventPublisher):
    transport = TRANSPORT

    def __init__(self, plane: NatsEventPlane, namespace: str, component: str | None, topic: str,
                 publisher_id: int) -> None:
        super().__init__(plane.runtime, namespace, component, topic, publisher_id)
        self._plane = plane
        self._nc: NatsClient | None = None

    async def _open(self) -> None:
        self._nc = await self._plane.connection()

    def _channel_record(self) -> registry.EventChannel:
        return self.channel(subject=self.subject)

    async def _send(self, envelope: Envelope) -> bool:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.publish(self.subject, encode_envelope(envelope))
        except (nats.errors.Error, OSError) as exc:
            logger.debug("nats publish on %s failed: %s", self.subject, exc)
            return False
        return True

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has everything published so far (useful before exiting)."""
        if self._nc is not None and self._nc.is_connected:
            await self._nc.flush(timeout=timeout)

    async def _close_transport(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush(timeout=1.0)
        self._nc = None


class NatsEventSubscriber(EventSubscriber):
    transport = TRANSPORT

    def __init__(self, plane: NatsEventPlane, namespace: str, component: str | None, topic: str,
                 on_gap: GapCallback | None) -> None:
        super().__init__(plane.runtime, namespace, component, topic, on_gap)
        self._plane = plane
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIBER_QUEUE_LIMIT)
        self._sub: Any = None

    async def _open(self) -> None:
        nc = await self._plane.connection()
        self._sub = await nc.subscribe(
            self.subject, cb=self._on_message, pending_msgs_limit=0, pending_bytes_limit=0)
        # The server has the subscription once flush returns: events published after start() arrive.
        await nc.flush()

    async def _on_message(self, msg: Msg) -> None:
        try:
            self._queue.put_nowait(msg.data)
        except asyncio.QueueFull:
            self.counts.dropped += 1

    async def _receive(self) -> Envelope | None:
        queue = self._queue
        while True:
            data = await queue.get()
            if data is None:
                return None
            try:
                envelope = decode_envelope(data)
            except InvalidEvent as exc:
                self._invalid(exc)
                continue
            return envelope

    async def _close_transport(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        # Wake the iterator even if the queue is full of undelivered events.
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except asyncio.QueueFull:
                self._queue.get_nowait()


class NatsEventPlane(EventPlane):
    kind = TRANSPORT

    def __init__(self, runtime: DistributedRuntime, url: str | None = None) -> None:
        super().__init__(runtime)
        self.url = url or server_url()
        self._nc: NatsClient | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> NatsClient:
        """The plane's shared connection, opened on first use."""
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = await connect(self.url, name=f"dynamo-{self.runtime.instance_id:x}")
            return self._nc

    async def _make_publisher(self, namespace: str, component: str | None, topic: str,
                              publisher_id: int) -> NatsEventPublisher:
        return NatsEventPublisher(self, namespace, component, topic, publisher_id)

    async def _make_subscriber(self, namespace: str, component: str | None, topic: str,
                               on_gap: GapCallback | None) -> NatsEventSubscriber:
        return NatsEventSubscriber(self, namespace, component, topic, on_gap)

    async def _close_plane(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            with contextlib.suppress(Exception):
                await nc.close()
