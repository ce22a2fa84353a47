"""Durable KV events on NATS JetStream (``--durable-kv-events``; reference §2.7).

Workers publish their ``kv-events`` envelopes to a JetStream stream (one per worker component,
``stream_name("namespace.{ns}.component.{comp}.kv-events")``) and wait for the stream's ack,
retrying in order until it comes: a NATS restart delays events, it does not lose them.

Each router replica reads the stream with a consumer of its own. Every ``--router-snapshot-threshold``
events it writes its index (as stored events) with the stream sequence it covers to the object store
(bucket ``namespace-{ns}-component-{comp}-radix-bucket``, object ``radix-state``) and purges the
stream below that sequence. A router that starts, or restarts, loads the newest snapshot and reads
the stream from the sequence after it, so it resumes exactly where the index it loaded left off.
``--router-reset-states`` deletes the snapshots and purges the stream first.

A router's consumer lives with the router (deleted on close; JetStream drops an abandoned one after
``CONSUMER_INACTIVE_SECS``): what must survive a restart is the snapshot plus the stream, not a cursor
into a lost in-memory index.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from dynamo.kv_router.protocols import RouterEvent, decode_router_event
from dynamo.runtime import errors
from dynamo.runtime.event_plane.envelope import (
    Envelope,
    InvalidEvent,
    decode_envelope,
    encode_envelope,
    now_ms,
)
from dynamo.runtime.event_plane.envelope import subject as event_subject
from dynamo.runtime.event_plane.jetstream import SNAPSHOT_OBJECT, JetStream, snapshot_bucket, stream_name

if TYPE_CHECKING:
    from dynamo.kv_router.router import KvRouter

logger = logging.getLogger(__name__)

TOPIC = "kv-events"
RETRY_SECS = 0.25
FETCH_BATCH = 512
FETCH_TIMEOUT_SECS = 0.5
CONSUMER_INACTIVE_SECS = 3600.0
# Events a worker holds while JetStream is unreachable; beyond it the oldest are dropped (logged).
MAX_BUFFERED_EVENTS = 1_000_000


def kv_subject(namespace: str, component: str) -> str:
    return event_subject(namespace, component, TOPIC)


class Snapshot(msgspec.Struct):
    """An index as stored events, and the last stream sequence it includes."""

    sequence: int
    events: list[Any]


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(sequence: int, events: list[RouterEvent]) -> bytes:
    return _snapshot_encoder.encode(Snapshot(sequence, [e.to_wire() for e in events]))


def decode_snapshot(data: bytes) -> tuple[int, list[RouterEvent]]:
    snap = _snapshot_decoder.decode(data)
    return snap.sequence, [RouterEvent.from_wire(e) for e in snap.events]


# ----------------------------------------------------------------------------------------------
# worker side


class DurableKvPublisher:
    """The worker's ``kv-events`` publisher in durable mode: same ``publish(obj)`` as the event plane's."""

    def __init__(self, js: JetStream, namespace: str, component: str, publisher_id: int) -> None:
        self.js = js
        self.subject = kv_subject(namespace, component)
        self.stream = stream_name(self.subject)
        self.publisher_id = publisher_id
        self._sequence = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._kick = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    @classmethod
    async def create(cls, runtime: Any, namespace: str, component: str, publisher_id: int) -> DurableKvPublisher:
        pub = cls(JetStream(await runtime.nats_connection()), namespace, component, publisher_id)
        await pub.js.ensure_stream(pub.stream, [pub.subject])
        pub._task = asyncio.get_running_loop().create_task(pub._run())
        return pub

    async def publish(self, obj: Any) -> None:
        envelope = Envelope(self.publisher_id, self._sequence, now_ms(), TOPIC, _snapshot_encoder.encode(obj))
        self._sequence += 1
        if len(self._queue) >= MAX_BUFFERED_EVENTS:
            self._queue.popleft()
            logger.error("durable KV events: JetStream unreachable and %d events buffered; dropping the oldest",
                         MAX_BUFFERED_EVENTS)
        self._queue.append(encode_envelope(envelope))
        self._empty.clear()
        self._kick.set()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._kick.wait()
            self._kick.clear()
            while queue:
                try:
                    await self.js.publish(self.subject, queue[0])
                except (nats.errors.Error, asyncio.TimeoutError) as exc:
                    _raise_if_cancelling()
                    # In order, or not at all: keep the event and retry (NATS restarting, stream moving).
                    logger.debug("durable KV events: publish failed (%s); retrying", exc)
                    await asyncio.sleep(RETRY_SECS)
                    continue
                queue.popleft()
                self.published += 1
            self._empty.set()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every event so far is stored in the stream (tests, shutdown)."""
        await asyncio.wait_for(self._empty.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _raise_if_cancelling() -> None:
    """nats-py turns a cancellation that races its own timeout into a timeout error; a loop that retries
    on timeouts must not swallow it, or its task can never be cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# ----------------------------------------------------------------------------------------------
# router side


class DurableKvConsumer:
    """Feeds a router's index from the stream; writes snapshots; resumes from the newest one."""

    def __init__(self, router: KvRouter, js: JetStream, namespace: str, component: str) -> None:
        self.router = router
        self.js = js
        self.subject = kv_subject(namespace, component)
        self.stream = stream_name(self.subject)
        self.bucket = snapshot_bucket(namespace, component)
        self.durable = f"router-{router.router_id:x}"
        self.threshold = max(1, router.config.router_snapshot_threshold)
        self.last_sequence = 0
        self.since_snapshot = 0
        self.snapshots_written = 0
        self.loaded_snapshot: int | None = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, router: KvRouter, runtime: Any, namespace: str, component: str) -> DurableKvConsumer:
        consumer = cls(router, JetStream(await runtime.nats_connection()), namespace, component)
        await consumer._open(reset=router.config.router_reset_states)
        consumer._task = asyncio.get_running_loop().create_task(consumer._run())
        return consumer

    async def _open(self, reset: bool) -> None:
        if reset:
            logger.info("--router-reset-states: purging %s and deleting snapshots in %s", self.stream, self.bucket)
            await self.js.delete_object_bucket(self.bucket)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.purge(self.stream)
        await self.js.ensure_stream(self.stream, [self.subject])
        if not reset:
            data = await self._read_snapshot()
            if data is not None:
                sequence, events = decode_snapshot(data)
                for ev in events:
                    self.router.indexer.apply_event(ev)
                self.last_sequence = self.loaded_snapshot = sequence
                logger.info("KV index loaded from snapshot at stream sequence %d (%d events)", sequence, len(events))
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.ALL,
            deliver_policy=(api.DeliverPolicy.BY_START_SEQUENCE if self.last_sequence else api.DeliverPolicy.ALL),
            opt_start_seq=(self.last_sequence + 1) if self.last_sequence else None,
            filter_subject=self.subject,
            inactive_threshold=CONSUMER_INACTIVE_SECS,
        )
        self._sub = await self.js.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                                    config=config)

    async def _read_snapshot(self) -> bytes | None:
        # Another replica may be replacing the object while we read it: read until two reads agree. A
        # read caught by a replacement stalls (its chunks are purged): that read is simply retried.
        previous = await self._get_snapshot()
        for _ in range(5):
            if previous is None:
                return None
            current = await self._get_snapshot()
            if current == previous:
                return current
            previous = current
        return previous

    async def _get_snapshot(self, attempts: int = 10) -> bytes | None:
        for attempt in range(attempts):
            try:
                return await self.js.get_object(self.bucket, SNAPSHOT_OBJECT)
            except asyncio.TimeoutError:
                logger.info("durable KV events: snapshot read stalled (replaced while read?); retry %d", attempt + 1)
        raise errors.Unavailable(f"cannot read the KV index snapshot from {self.bucket}: every read stalled")

    async def _run(self) -> None:
        while True:
            try:
                msgs = await self._sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_SECS)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                _raise_if_cancelling()
                continue
            except nats.errors.Error as exc:
                _raise_if_cancelling()
                # NATS restarting: the consumer and its position are on the server; fetch again.
                logger.debug("durable KV events: fetch failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_SECS)
                continue
            if not msgs:
                continue
            for msg in msgs:
                self._apply(msg.data)
                self.last_sequence = int(msg.metadata.sequence.stream)
            with contextlib.suppress(nats.errors.Error):
                await msgs[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
            self.since_snapshot += len(msgs)
            if self.since_snapshot >= self.threshold:
                await self.snapshot()

    def _apply(self, data: bytes) -> None:
        try:
            event = decode_router_event(decode_envelope(data).payload)
        except (InvalidEvent, ValueError) as exc:
            logger.warning("dropping malformed durable KV event: %s", exc)
            return
        self.router.apply_event(event)

    async def snapshot(self) -> None:
        """Store the index as of ``last_sequence`` and purge the events it covers."""
        sequence = self.last_sequence
        data = encode_snapshot(sequence, self.router.indexer.dump_events())
        try:
            await self.js.put_object(self.bucket, SNAPSHOT_OBJECT, data)
            await self.js.purge(self.stream, before_sequence=sequence + 1)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            logger.warning("durable KV events: snapshot at %d not written (%s); next batch retries", sequence, exc)
            return
        self.since_snapshot = 0
        self.snapshots_written += 1
        logger.info("KV index snapshot at stream sequence %d (%d bytes); stream purged below it", sequence, len(data))

    async def close(self) -> None:
        task = self._task
        if task is not None:
            # A cancel that lands while nats-py's fetch is timing out can come back as a timeout:
            # cancel until the task has really ended, never wait on it unboundedly.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(self.stream, self.durable)
