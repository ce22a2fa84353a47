"""JetStream helpers for durable KV events and router snapshots (reference §2.7).

Streams for event subjects, durable pull consumers with explicit acks (a consumer re-created under
the same durable name, from any connection or process, resumes after its last ack), purging of
acknowledged messages, and key-value / object-store buckets for snapshots.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from dynamo.runtime.event_plane.nats import connect

DEFAULT_MAX_AGE_SECS = 3600.0
SNAPSHOT_OBJECT = "radix-state"

_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """Lowercase, every run of other characters becomes one '-', no leading/trailing '-'."""
    return _NON_SLUG.sub("-", name.lower()).strip("-")


def stream_name(subject: str) -> str:
    """Stream name for an event subject: ``namespace.ns.component.c.kv-events`` → ``namespace-ns-...``."""
    return slugify(subject).replace("_", "-")


def snapshot_bucket(namespace: str, component: str) -> str:
    return slugify(f"namespace.{namespace}.component.{component}-radix-bucket").replace("_", "-")


class DurableConsumer:
    """A pull consumer with explicit acks, bound to a durable name on a stream."""

    def __init__(self, stream: str, durable: str, subscription: Any) -> None:
        self.stream = stream
        self.durable = durable
        self._sub = subscription

    async def fetch(self, batch: int = 100, timeout: float = 1.0) -> list[Msg]:
        """Up to ``batch`` unacknowledged messages; empty if none arrive within ``timeout``."""
        try:
            return list(await self._sub.fetch(batch, timeout=timeout))
        except nats.errors.TimeoutError:
            # A cancellation racing nats-py's own timeout surfaces as this timeout: keep it a cancellation.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            return []

    @staticmethod
    async def ack(msg: Msg) -> None:
        """Acknowledge and wait for the server to record it (so a restart resumes after it)."""
        await msg.ack_sync()

    async def info(self) -> api.ConsumerInfo:
        return await self._sub.consumer_info()

    async def unsubscribe(self) -> None:
        """Stop fetching; the durable consumer and its ack state stay on the server."""
        await self._sub.unsubscribe()


#: a snapshot read that makes no progress for this long is abandoned (and retried by the caller)
OBJECT_GET_TIMEOUT_SECS = 5.0


class JetStream:
    """One connection's JetStream context with the operations the router needs."""

    def __init__(self, nc: NatsClient, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self._owns = owns_connection

    @classmethod
    async def connect(cls, url: str | None = None, *, name: str | None = None) -> JetStream:
        return cls(await connect(url, name=name), owns_connection=True)

    async def close(self) -> None:
        if self._owns:
            await self.nc.close()

    # -- streams ----------------------------------------------------------------------------------

    async def ensure_stream(
        self, name: str, subjects: list[str], *, max_age_secs: float = DEFAULT_MAX_AGE_SECS
    ) -> api.StreamInfo:
        """Create the stream, or attach to it (adding any missing subjects) if it exists."""
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return await self.js.add_stream(name=name, subjects=subjects, max_age=max_age_secs)
        existing = list(info.config.subjects or [])
        missing = [s for s in subjects if s not in existing]
        if missing:
            info.config.subjects = existing + missing
            info = await self.js.update_stream(info.config)
        return info

    async def publish(self, subject: str, data: bytes) -> int:
        """Publish and wait for the stream's ack; returns the stream sequence."""
        ack = await self.js.publish(subject, data)
        return int(ack.seq)

    async def stream_messages(self, name: str) -> int:
        info = await self.js.stream_info(name)
        return int(info.state.messages)

    async def purge(self, name: str, *, before_sequence: int | None = None) -> None:
        """Purge the stream; with ``before_sequence``, only messages below it (the acknowledged ones)."""
        await self.js.purge_stream(name, seq=before_sequence)

    async def purge_acknowledged(self, name: str, durable: str) -> int:
        """Drop messages the durable consumer has acknowledged; returns the first sequence kept."""
        info = await self.js.consumer_info(name, durable)
        keep_from = int(info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        if keep_from > 1:
            await self.purge(name, before_sequence=keep_from)
        return keep_from

    async def delete_stream(self, name: str) -> None:
        try:
            await self.js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass

    async def durable_consumer(
        self, stream: str, durable: str, subject: str, *, ack_wait_secs: float = 30.0
    ) -> DurableConsumer:
        """Create or re-attach the durable pull consumer ``durable`` on ``stream`` for ``subject``."""
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait_secs,
            filter_subject=subject,
        )
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        return DurableConsumer(stream, durable, sub)

    async def delete_consumer(self, stream: str, durable: str) -> None:
        try:
            await self.js.delete_consumer(stream, durable)
        except nats.js.errors.NotFoundError:
            pass

    # -- key-value buckets ----------------------------------------------------------------------

    async def kv_bucket(self, bucket: str) -> KeyValue:
        try:
            return await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(bucket=bucket)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Returns the new revision."""
        return int(await (await self.kv_bucket(bucket)).put(key, value))

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        kv = await self.kv_bucket(bucket)
        try:
            entry = await kv.get(key)
        except nats.js.errors.NotFoundError:  # missing or deleted
            return None
        return entry.value

    # -- object store (router snapshots) --------------------------------------------------------

    async def object_bucket(self, bucket: str) -> ObjectStore:
        try:
            return await self.js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_object_store(bucket=bucket)

    async def put_object(self, bucket: str, name: str, data: bytes) -> None:
        await (await self.object_bucket(bucket)).put(name, data)

    async def get_object(self, bucket: str, name: str, timeout: float = OBJECT_GET_TIMEOUT_SECS) -> bytes | None:
        """The object's bytes, None if there is none; ``asyncio.TimeoutError`` if the read stalls.

        nats-py waits without a deadline for an object's chunks, and a writer replacing the object
        mid-read purges the chunks being waited for: the read would hang for good.
        """
        store = await self.object_bucket(bucket)
        try:
            result = await asyncio.wait_for(store.get(name), timeout)
        except nats.js.errors.NotFoundError:  # missing or deleted
            return None
        return None if result.data is None else bytes(result.data)

    async def delete_object_bucket(self, bucket: str) -> None:
        try:
            await self.js.delete_object_store(bucket)
        except nats.js.errors.NotFoundError:
            pass
