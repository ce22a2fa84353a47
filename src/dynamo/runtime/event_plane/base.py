"""Transport-independent halves of the event plane: publisher, subscriber and plane bookkeeping.

A publisher stamps every event with its id and a sequence (from 0) and advertises itself as an
EventChannel record in discovery. A subscriber watches those records (to connect, for ZMQ, and to
forget publishers that left) and passes each envelope through a :class:`SequenceTracker`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.event_plane import metrics
from dynamo.runtime.event_plane.envelope import (
    Envelope,
    GapCallback,
    SequenceTracker,
    Verdict,
    decode_payload,
    encode_payload,
    now_ms,
    subject,
)
from dynamo.runtime.tasks import supervise

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)


class EventPublisher(abc.ABC):
    """Publishes events on one topic. ``await publish(obj)``; sequences start at 0."""

    transport: str = ""

    def __init__(
        self,
        runtime: DistributedRuntime,
        namespace: str,
        component: str | None,
        topic: str,
        publisher_id: int,
    ) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.component = component
        self.topic = topic
        self.subject = subject(namespace, component, topic)
        self.publisher_id = publisher_id
        self.sequence = 0
        self.closed = False
        self.counts = metrics.track(topic, self.transport)
        self.channel_key = registry.event_channel_key(namespace, component or "", topic, publisher_id)
        self.on_closed: Callable[[EventPublisher], None] | None = None

    @property
    def published(self) -> int:
        return self.counts.published

    @property
    def failed(self) -> int:
        return self.counts.publish_failed

    def channel(self, **where: str) -> registry.EventChannel:
        return registry.EventChannel(
            self.namespace, self.component or "", self.topic, self.publisher_id, self.transport, **where)

    async def publish(self, obj: Any) -> bool:
        """Send one event; returns False if the transport could not take it.

        A failed send still consumes its sequence number, so subscribers see the loss as a gap
        instead of the stream silently closing over it.
        """
        if self.closed:
            raise errors.Unavailable(f"event publisher for {self.subject} is closed")
        sequence = self.sequence
        self.sequence = sequence + 1
        envelope = Envelope(self.publisher_id, sequence, now_ms(), self.topic, encode_payload(obj))
        if await self._send(envelope):
            self.counts.published += 1
            return True
        self.counts.publish_failed += 1
        return False

    async def start(self) -> None:
        await self._open()
        await self.runtime.store.put(self.channel_key, registry.encode(self._channel_record()))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.runtime.store.delete(self.channel_key)
        await self._close_transport()
        metrics.retire(self.counts)
        if self.on_closed is not None:
            self.on_closed(self)

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    def _channel_record(self) -> registry.EventChannel: ...

    @abc.abstractmethod
    async def _send(self, envelope: Envelope) -> bool: ...

    @abc.abstractmethod
    async def _close_transport(self) -> None: ...


class EventSubscriber(abc.ABC):
    """Async iterator of :class:`Envelope` for one topic, deduped and gap-checked per publisher.

    ``on_gap(publisher_id, expected, got)`` is called (synchronously, from the iterating task) when
    a publisher's sequence jumps; the first message seen from a publisher is never a gap.
    """

    transport: str = ""

    def __init__(
        self,
        runtime: DistributedRuntime,
        namespace: str,
        component: str | None,
        topic: str,
        on_gap: GapCallback | None = None,
    ) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.component = component
        self.topic = topic
        self.subject = subject(namespace, component, topic)
        self.on_gap = on_gap
        self.tracker = SequenceTracker()
        self.closed = False
        self.counts = metrics.track(topic, self.transport)
        self.channels: dict[str, registry.EventChannel] = {}
        self._prefix = registry.event_channels_prefix(namespace, component or "", topic)
        self._watch: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.on_closed: Callable[[EventSubscriber], None] | None = None

    # -- counters seen by tests and operators -----------------------------------------------------

    @property
    def received(self) -> int:
        return self.counts.received

    @property
    def invalid(self) -> int:
        return self.counts.invalid

    @property
    def dropped(self) -> int:
        """Duplicates and old sequences, plus events lost to a full local queue."""
        return self.counts.dropped

    @property
    def duplicates(self) -> int:
        return self.tracker.duplicates

    @property
    def gaps(self) -> int:
        return self.tracker.gaps

    @property
    def missed(self) -> int:
        return self.tracker.missed

    def publishers(self) -> set[int]:
        """Publisher ids currently advertised in discovery for this topic."""
        return {c.instance_id for c in self.channels.values()}

    async def wait_for_publishers(self, count: int, timeout: float = 10.0) -> set[int]:
        """Wait until at least ``count`` publishers are advertised (and connected, for ZMQ)."""
        async def until() -> None:
            while len(self.publishers()) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.publishers()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._open()
        # Snapshot first so that publishers already running are connected when start() returns.
        for key, value in (await self.runtime.store.get_prefix(self._prefix)).items():
            self._on_put(key, value)
        self._watch = await self.runtime.store.watch(self._prefix)
        self._watch_task = supervise("event channel follower", self._watch_channels).task

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self._watch.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        await self._close_transport()
        metrics.retire(self.counts)
        if self.on_closed is not None:
            self.on_closed(self)

    async def _watch_channels(self) -> None:
        async for event in self._watch:
            try:
                if event.kind == "put" and event.value is not None:
                    self._on_put(event.key, event.value)
                elif event.kind == "delete":
                    self._on_delete(event.key)
            except Exception:
                logger.exception("event channel update for %s failed", event.key)

    def _on_put(self, key: str, value: bytes) -> None:
        try:
            channel = registry.decode_event_channel(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.warning("ignoring malformed event channel record %s", key)
            return
        old = self.channels.get(key)
        if old == channel:
            return
        if old is not None:
            # Re-registered with a new address: a restarted publisher, whose sequences restart.
            self._channel_removed(old)
            self.tracker.forget(old.instance_id)
        self.channels[key] = channel
        self._channel_added(channel)
        self._changed.set()

    def _on_delete(self, key: str) -> None:
        old = self.channels.pop(key, None)
        if old is None:
            return
        self._channel_removed(old)
        self.tracker.forget(old.instance_id)
        self._changed.set()

    # -- per message ------------------------------------------------------------------------------

    def __aiter__(self) -> EventSubscriber:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            envelope = await self._receive()
            if envelope is None:
                raise StopAsyncIteration
            if self._accept(envelope.publisher_id, envelope.sequence):
                return envelope

    def _accept(self, publisher_id: int, sequence: int) -> bool:
        tracker = self.tracker
        expected = tracker.expected.get(publisher_id)
        verdict = tracker.observe(publisher_id, sequence)
        if verdict is Verdict.DUPLICATE:
            self.counts.dropped += 1
            return False
        if verdict is Verdict.GAP:
            assert expected is not None
            self.counts.gaps += 1
            self.counts.missed += sequence - expected
            logger.debug("gap on %s from publisher %x: expected %d, got %d",
                         self.subject, publisher_id, expected, sequence)
            if self.on_gap is not None:
                try:
                    self.on_gap(publisher_id, expected, sequence)
                except Exception:
                    logger.exception("on_gap callback failed")
        self.counts.received += 1
        return True

    def _invalid(self, reason: object) -> None:
        counts = self.counts
        counts.invalid += 1
        if counts.invalid <= 10 or counts.invalid % 1000 == 0:
            logger.warning("skipping invalid event on %s (%d so far): %s", self.subject, counts.invalid, reason)

    @staticmethod
    def decode(envelope: Envelope, type: Any = None) -> Any:
        """Decode an envelope's payload into ``type`` (builtins if None)."""
        return decode_payload(envelope.payload, type)

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _receive(self) -> Envelope | None:
        """Next decodable envelope (invalid input is counted and skipped), None once closed."""

    @abc.abstractmethod
    async def _close_transport(self) -> None: ...

    def _channel_added(self, channel: registry.EventChannel) -> None:  # noqa: B027 - optional hook
        pass

    def _channel_removed(self, channel: registry.EventChannel) -> None:  # noqa: B027 - optional hook
        pass


class EventPlane(abc.ABC):
    """Factory for publishers and subscribers of one transport; owns what they share."""

    kind: str = ""

    def __init__(self, runtime: DistributedRuntime) -> None:
        self.runtime = runtime
        self._publishers: set[EventPublisher] = set()
        self._subscribers: set[EventSubscriber] = set()
        self.closed = False

    async def publisher(
        self, namespace: str, component: str | None, topic: str, publisher_id: int | None = None
    ) -> EventPublisher:
        """A started publisher; ``publisher_id`` defaults to the runtime's instance id."""
        self._check_open()
        pid = self.runtime.instance_id if publisher_id is None else publisher_id
        pub = await self._make_publisher(namespace, component, topic, pid)
        await pub.start()
        pub.on_closed = self._publishers.discard
        self._publishers.add(pub)
        return pub

    async def subscriber(
        self, namespace: str, component: str | None, topic: str, on_gap: GapCallback | None = None
    ) -> EventSubscriber:
        self._check_open()
        sub = await self._make_subscriber(namespace, component, topic, on_gap)
        await sub.start()
        sub.on_closed = self._subscribers.discard
        self._subscribers.add(sub)
        return sub

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for item in [*self._publishers, *self._subscribers]:
            with contextlib.suppress(Exception):
                await item.close()
        self._publishers.clear()
        self._subscribers.clear()
        await self._close_plane()

    def _check_open(self) -> None:
        if self.closed:
            raise errors.Unavailable(f"{self.kind} event plane is closed")

    @abc.abstractmethod
    async def _make_publisher(
        self, namespace: str, component: str | None, topic: str, publisher_id: int
    ) -> EventPublisher: ...

    @abc.abstractmethod
    async def _make_subscriber(
        self, namespace: str, component: str | None, topic: str, on_gap: GapCallback | None
    ) -> EventSubscriber: ...

    async def _close_plane(self) -> None:  # noqa: B027 - optional hook
        pass

