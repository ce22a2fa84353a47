"""Event plane over real sockets: ZMQ (no server) and NATS (a real nats-server, core + JetStream)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from dynamo.kv_router.protocols import ActiveLoad
from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.distributed import DistributedRuntime
from dynamo.runtime.event_plane import Envelope, EventPublisher, EventSubscriber, create_event_plane
from dynamo.runtime.event_plane import metrics as ep_metrics
from dynamo.runtime.event_plane.envelope import ZMQ_FRAME_VERSION, encode_envelope, zmq_frames
from dynamo.runtime.event_plane.jetstream import JetStream, stream_name
from dynamo.runtime.event_plane.nats import connect as nats_connect
from tests.integration.nats_fixtures import NatsServer, nats_server  # noqa: F401

pytestmark = pytest.mark.integration

BURST = 10_000


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Collector:
    """Drains a subscriber in the background, keeping per-publisher (sequence, payload) in order."""

    def __init__(self, sub: EventSubscriber) -> None:
        self.sub = sub
        self.events: dict[int, list[tuple[int, Any]]] = {}
        self.last: dict[int, Envelope] = {}
        self.gap_calls: list[tuple[int, int, int]] = []
        sub.on_gap = lambda pid, expected, got: self.gap_calls.append((pid, expected, got))
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for env in self.sub:
            self.events.setdefault(env.publisher_id, []).append((env.sequence, env.decode()))
            self.last[env.publisher_id] = env

    def payloads(self, pid: int) -> list[Any]:
        return [p for _, p in self.events.get(pid, [])]

    def has(self, pid: int, pred: Callable[[Any], bool]) -> bool:
        events = self.events.get(pid)
        return bool(events) and pred(events[-1][1])

    async def stop(self) -> None:
        await self.sub.close()
        await asyncio.wait_for(self.task, 5)


@pytest.fixture(params=["zmq", "nats"])
def plane_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "nats":
        server: NatsServer = request.getfixturevalue("nats_server")
        if not server.running:
            server.start()
        monkeypatch.setenv("NATS_SERVER", server.url)
    return str(request.param)


@pytest.fixture
async def runtimes(plane_kind: str) -> AsyncIterator[Callable[[], Awaitable[DistributedRuntime]]]:
    created: list[DistributedRuntime] = []

    async def make() -> DistributedRuntime:
        rt = await DistributedRuntime.create("mem", event_plane=plane_kind)
        created.append(rt)
        return rt

    yield make
    for rt in created:
        await rt.shutdown(grace_period=0)


def fresh_namespace() -> str:
    return f"ep-{uuid.uuid4().hex[:8]}"


async def prime(pubs: list[EventPublisher], collectors: list[Collector], timeout: float = 10.0) -> None:
    """Publish probes until every collector hears every publisher (past the ZMQ slow joiner)."""
    deadline = time.monotonic() + timeout

    def all_heard() -> bool:
        return all(c.has(p.publisher_id, lambda x: "probe" in x) for c in collectors for p in pubs)

    while not all_heard():
        if time.monotonic() > deadline:
            raise AssertionError("subscribers never heard every publisher")
        for p in pubs:
            await p.publish({"probe": True})
        await asyncio.sleep(0.01)


def assert_ordered_and_complete(c: Collector, pid: int, count: int) -> None:
    events = c.events[pid]
    seqs = [s for s, _ in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequences not consecutive"
    burst = [p["i"] for p in c.payloads(pid) if "i" in p]
    assert burst == list(range(count))


# -- both transports ----------------------------------------------------------------------------


async def test_three_publishers_reach_two_subscribers_complete_and_in_order(runtimes, plane_kind) -> None:
    ns = fresh_namespace()
    sub_rts = [await runtimes(), await runtimes()]
    pub_rt = await runtimes()
    collectors = [Collector(await rt.namespace(ns).component("backend").subscribe("kv-events"))
                  for rt in sub_rts]
    comp = pub_rt.namespace(ns).component("backend")
    plane = pub_rt.event_plane()
    # One process hosting three workers: explicit publisher ids.
    ids = random.sample(range(1, 2**63), 3)
    pubs = [await plane.publisher(ns, "backend", "kv-events", publisher_id=i) for i in ids]
    assert comp.name == "backend"
    for c in collectors:
        assert await c.sub.wait_for_publishers(3) == set(ids)
    await prime(pubs, collectors)

    async def burst(pub: EventPublisher) -> None:
        for i in range(BURST):
            assert await pub.publish({"i": i})
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the subscribers drain between chunks

    await asyncio.gather(*(burst(p) for p in pubs))
    for c in collectors:
        for pid in ids:
            await eventually(lambda c=c, pid=pid: c.has(pid, lambda x: x.get("i") == BURST - 1),
                             timeout=60, what=f"last event of {pid:x}")
    for c in collectors:
        for pid in ids:
            assert_ordered_and_complete(c, pid, BURST)
        assert c.sub.gaps == 0 and c.sub.duplicates == 0 and c.sub.invalid == 0
        assert c.gap_calls == []
    assert all(p.published == p.sequence for p in pubs)
    for c in collectors:
        await c.stop()


async def test_late_publisher_is_found_and_exiting_one_is_dropped(runtimes, plane_kind) -> None:
    ns = fresh_namespace()
    sub_rt = await runtimes()
    c = Collector(await sub_rt.namespace(ns).subscribe("kv_metrics"))  # namespace-scoped topic
    assert c.sub.publishers() == set()

    pub_rt = await runtimes()
    pub = await pub_rt.namespace(ns).event_publisher("kv_metrics")
    assert pub.subject == f"namespace.{ns}.kv_metrics"
    await c.sub.wait_for_publishers(1)
    await prime([pub], [c])
    load = ActiveLoad(worker_id=pub.publisher_id, dp_rank=0, kv_used_blocks=7)
    await pub.publish(load)
    await eventually(lambda: c.has(pub.publisher_id, lambda x: x.get("kv_used_blocks") == 7))
    last = c.last[pub.publisher_id]
    assert EventSubscriber.decode(last, ActiveLoad) == load
    assert last.decode(ActiveLoad) == load
    assert last.sequence == pub.sequence - 1 and last.topic == "kv_metrics"

    # A second publisher exits with its process (its lease and channel record go away).
    other_rt = await runtimes()
    other = await other_rt.namespace(ns).event_publisher("kv_metrics")
    await c.sub.wait_for_publishers(2)
    await prime([other], [c])
    assert other.publisher_id in c.sub.tracker.expected
    await other_rt.shutdown(grace_period=0)
    await eventually(lambda: c.sub.publishers() == {pub.publisher_id}, what="exited publisher dropped")
    assert other.publisher_id not in c.sub.tracker.expected
    if plane_kind == "zmq":
        assert c.sub.connected_addresses() == [pub.address]  # type: ignore[attr-defined]

    await pub.close()
    await eventually(lambda: c.sub.publishers() == set(), what="closed publisher dropped")
    assert c.sub.tracker.expected == {}
    assert await sub_rt.store.get_prefix(registry.event_channels_prefix(ns, "", "kv_metrics")) == {}
    with pytest.raises(errors.Unavailable):
        await pub.publish({"after": "close"})
    await c.stop()


async def test_subscriber_close_ends_iteration(runtimes, plane_kind) -> None:
    rt = await runtimes()
    sub = await rt.namespace(fresh_namespace()).component("c").subscribe("t")
    waiter = asyncio.get_running_loop().create_task(sub.__anext__())
    await asyncio.sleep(0)
    await sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 5)


async def test_metrics_count_published_and_received(runtimes, plane_kind) -> None:
    ns = fresh_namespace()
    topic = f"metrics-{uuid.uuid4().hex[:6]}"
    rt = await runtimes()
    c = Collector(await rt.namespace(ns).subscribe(topic))
    pub = await rt.namespace(ns).event_publisher(topic)
    await prime([pub], [c])
    for i in range(10):
        await pub.publish({"i": i})
    await eventually(lambda: c.has(pub.publisher_id, lambda x: x.get("i") == 9))
    totals = ep_metrics.totals()
    assert totals[("published", topic, plane_kind)] == pub.sequence
    assert totals[("received", topic, plane_kind)] == c.sub.received
    await c.stop()
    await pub.close()
    # Retired counts stay: counters never go backwards.
    assert ep_metrics.totals()[("published", topic, plane_kind)] == pub.sequence
    from prometheus_client import REGISTRY
    value = REGISTRY.get_sample_value("dynamo_event_plane_published_total",
                                      {"topic": topic, "transport": plane_kind})
    assert value == pub.sequence


def test_unknown_event_plane_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="zmq, nats"):
        create_event_plane("kafka", object())


# -- ZMQ specifics ------------------------------------------------------------------------------


async def test_zmq_garbage_is_counted_and_skipped() -> None:
    ns = fresh_namespace()
    rt = await DistributedRuntime.create("mem", event_plane="zmq")
    ctx = zmq.asyncio.Context()
    rogue = ctx.socket(zmq.PUB)
    try:
        c = Collector(await rt.namespace(ns).component("w").subscribe("kv-events"))
        port = rogue.bind_to_random_port("tcp://127.0.0.1")
        rogue_id = 0xBAD
        record = registry.EventChannel(ns, "w", "kv-events", rogue_id, "zmq", address=f"tcp://127.0.0.1:{port}")
        await rt.store.put(registry.event_channel_key(ns, "w", "kv-events", rogue_id), registry.encode(record))
        await c.sub.wait_for_publishers(1)
        topic = f"namespace.{ns}.component.w.kv-events".encode()
        good = Envelope(rogue_id, 0, 0, "kv-events", msgspec.msgpack.encode({"ok": 1}))
        body = encode_envelope(good)
        garbage = [
            [b"just one frame"],
            [topic, b"short", b"x", b"y"],
            [topic, (rogue_id).to_bytes(8, "big"), (5).to_bytes(8, "big"), b"\x02" + len(body).to_bytes(4, "big") + body],
            [topic, (rogue_id).to_bytes(8, "big"), (6).to_bytes(8, "big"), bytes([ZMQ_FRAME_VERSION]) + b"\x00\x00\x00\x03abc"],
            [topic, (rogue_id).to_bytes(8, "big"), (7).to_bytes(8, "big"), b"\x01"],
            [b"wrong topic", *zmq_frames(topic, good)[1:]],
        ]
        # Keep sending (slow joiner) until a valid event gets through; garbage rides in front of it.
        seq = 100
        deadline = time.monotonic() + 10
        while not c.events:
            assert time.monotonic() < deadline, "valid event never arrived"
            for frames in garbage:
                await rogue.send_multipart(frames)
            valid = Envelope(rogue_id, seq, 0, "kv-events", msgspec.msgpack.encode({"ok": seq}))
            await rogue.send_multipart(zmq_frames(topic, valid))
            seq += 1
            await asyncio.sleep(0.01)
        await eventually(lambda: c.sub.invalid >= len(garbage))
        assert c.sub.invalid % len(garbage) == 0
        assert all(p == {"ok": s} for s, p in c.events[rogue_id])
        await c.stop()
    finally:
        rogue.close(linger=0)
        ctx.term()
        await rt.shutdown(grace_period=0)


async def test_zmq_duplicates_and_gaps_are_detected() -> None:
    ns = fresh_namespace()
    rt = await DistributedRuntime.create("mem", event_plane="zmq")
    ctx = zmq.asyncio.Context()
    rogue = ctx.socket(zmq.PUB)
    try:
        c = Collector(await rt.namespace(ns).component("w").subscribe("t"))
        port = rogue.bind_to_random_port("tcp://127.0.0.1")
        pid = 0xF00D
        record = registry.EventChannel(ns, "w", "t", pid, "zmq", address=f"tcp://127.0.0.1:{port}")
        await rt.store.put(registry.event_channel_key(ns, "w", "t", pid), registry.encode(record))
        await c.sub.wait_for_publishers(1)
        topic = f"namespace.{ns}.component.w.t".encode()

        def frames(seq: int) -> list[bytes]:
            return zmq_frames(topic, Envelope(pid, seq, 0, "t", msgspec.msgpack.encode(seq)))

        deadline = time.monotonic() + 10
        while not c.events:
            assert time.monotonic() < deadline
            await rogue.send_multipart(frames(10))
            await asyncio.sleep(0.01)
        for seq in (11, 11, 10, 12, 15, 14, 16, 0, 1):
            await rogue.send_multipart(frames(seq))
        await eventually(lambda: c.events[pid][-1][0] == 1)
        # The trailing 0, 1: the same publisher id restarted, its stream starts over.
        assert [s for s, _ in c.events[pid]] == [10, 11, 12, 15, 16, 0, 1]
        assert c.sub.tracker.restarts == 1
        assert c.gap_calls == [(pid, 13, 15)]
        assert c.sub.gaps == 1 and c.sub.missed == 2
        assert c.sub.duplicates >= 3  # the extra 10s of the slow-joiner loop are duplicates too
        await c.stop()
    finally:
        rogue.close(linger=0)
        ctx.term()
        await rt.shutdown(grace_period=0)


# -- NATS specifics -----------------------------------------------------------------------------


@pytest.fixture
def nats_env(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> NatsServer:  # noqa: F811
    if not nats_server.running:
        nats_server.start()
    monkeypatch.setenv("NATS_SERVER", nats_server.url)
    return nats_server


async def test_nats_unreachable_server_is_cannot_connect() -> None:
    from tests.integration.nats_fixtures import free_port

    with pytest.raises(errors.CannotConnect, match="cannot connect to NATS"):
        await nats_connect(f"nats://127.0.0.1:{free_port()}", timeout=1.0)


async def test_nats_undecodable_message_is_counted_and_skipped(nats_env: NatsServer) -> None:
    ns = fresh_namespace()
    rt = await DistributedRuntime.create("mem", event_plane="nats")
    raw = await nats_connect(nats_env.url)
    try:
        c = Collector(await rt.namespace(ns).component("w").subscribe("kv-events"))
        pub = await rt.namespace(ns).component("w").event_publisher("kv-events")
        subj = f"namespace.{ns}.component.w.kv-events"
        # The valid event travels on the subscriber's own connection, so once it is received the server
        # has the subscription: the raw connection's messages cannot race ahead of it and be dropped.
        await pub.publish({"ok": True})
        await eventually(lambda: c.has(pub.publisher_id, lambda x: x == {"ok": True}))
        await raw.publish(subj, b"\xc1 not msgpack")
        await raw.publish(subj, msgspec.msgpack.encode({"publisher_id": "x"}))
        await raw.flush()
        await eventually(lambda: c.sub.invalid == 2)
        assert c.sub.received == 1
        await c.stop()
    finally:
        await raw.close()
        await rt.shutdown(grace_period=0)


async def test_nats_server_restart_resumes_and_reports_lost_events_as_gaps(nats_env: NatsServer) -> None:
    ns = fresh_namespace()
    sub_rt = await DistributedRuntime.create("mem", event_plane="nats")
    pub_rt = await DistributedRuntime.create("mem", event_plane="nats")
    try:
        c = Collector(await sub_rt.namespace(ns).component("w").subscribe("kv-events"))
        pub = await pub_rt.namespace(ns).component("w").event_publisher("kv-events")
        pub_nc = await pub_rt.event_plane().connection()
        sub_nc = await sub_rt.event_plane().connection()
        pid = pub.publisher_id
        for i in range(100):
            await pub.publish({"i": i})
        await eventually(lambda: c.has(pid, lambda x: x.get("i") == 99))
        before_outage = pub.sequence

        nats_env.stop()
        try:
            await eventually(lambda: not pub_nc.is_connected, what="publisher to notice the outage")
            outage = [await pub.publish({"i": 100 + i}) for i in range(50)]
            assert outage == [False] * 50
            assert pub.failed == 50
        finally:
            nats_env.start()
        await eventually(lambda: pub_nc.is_connected and sub_nc.is_connected, timeout=20,
                         what="both clients to reconnect")
        # Publishing resumes; keep going until the subscriber (re-subscribed on reconnect) hears it.
        deadline = time.monotonic() + 20
        i = 150
        while not c.has(pid, lambda x: x.get("i", 0) >= 150):
            assert time.monotonic() < deadline, "no events after the restart"
            await pub.publish({"i": i})
            i += 1
            await asyncio.sleep(0.01)
        for _ in range(1000):
            await pub.publish({"i": i})
            i += 1
        await eventually(lambda: c.has(pid, lambda x: x.get("i") == i - 1), timeout=20)

        seqs = [s for s, _ in c.events[pid]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert c.gap_calls, "events lost in the outage were not reported"
        # Every sequence is either received or inside a reported gap, never both.
        lost = {s for _, expected, got in c.gap_calls for s in range(expected, got)}
        assert lost.isdisjoint(seqs)
        assert lost | set(seqs) == set(range(seqs[0], pub.sequence))
        assert set(range(before_outage, before_outage + 50)) <= lost
        assert c.sub.missed == len(lost)
        await c.stop()
    finally:
        if not nats_env.running:
            nats_env.start()
        await pub_rt.shutdown(grace_period=0)
        await sub_rt.shutdown(grace_period=0)


async def test_jetstream_durable_consumer_resumes_after_last_ack(nats_env: NatsServer) -> None:
    subj = f"namespace.{fresh_namespace()}.component.backend.kv-events"
    stream = stream_name(subj)
    assert stream == subj.replace(".", "-")
    producer = await JetStream.connect(nats_env.url)
    try:
        await producer.ensure_stream(stream, [subj])
        await producer.ensure_stream(stream, [subj])  # attaching again is fine
        for i in range(10):
            env = Envelope(1, i, 0, "kv-events", msgspec.msgpack.encode(i))
            assert await producer.publish(subj, encode_envelope(env)) == i + 1

        first = await JetStream.connect(nats_env.url)
        # Short ack wait: the delivered-but-unacked message is redelivered soon after the crash.
        consumer = await first.durable_consumer(stream, "router-a", subj, ack_wait_secs=1.0)
        got = await consumer.fetch(4, timeout=2)
        assert [msgspec.msgpack.decode(m.data, type=Envelope).sequence for m in got] == [0, 1, 2, 3]
        for m in got[:3]:
            await consumer.ack(m)  # seq 3 delivered but not acked: it must come back
        await first.close()  # the subscribing "process" goes away

        second = await JetStream.connect(nats_env.url)
        try:
            resumed = await second.durable_consumer(stream, "router-a", subj, ack_wait_secs=1.0)
            seen: list[int] = []
            deadline = time.monotonic() + 15
            while len(seen) < 7:
                assert time.monotonic() < deadline, f"only resumed {seen}"
                for m in await resumed.fetch(10, timeout=1):
                    seen.append(msgspec.msgpack.decode(m.data, type=Envelope).sequence)
                    await resumed.ack(m)
            assert sorted(seen) == list(range(3, 10))
            assert await producer.purge_acknowledged(stream, "router-a") == 11
            assert await producer.stream_messages(stream) == 0
            await second.delete_consumer(stream, "router-a")
        finally:
            await second.close()
        await producer.delete_stream(stream)
    finally:
        await producer.close()


async def test_jetstream_object_store_round_trips_20mb_and_kv(nats_env: NatsServer) -> None:
    js = await JetStream.connect(nats_env.url)
    bucket = f"snap-{uuid.uuid4().hex[:8]}"
    try:
        blob = os.urandom(20 * 1024 * 1024)
        await js.put_object(bucket, "radix-state", blob)
        assert await js.get_object(bucket, "radix-state") == blob
        assert await js.get_object(bucket, "missing") is None
        await js.delete_object_bucket(bucket)

        assert await js.kv_get(bucket, "k") is None
        rev = await js.kv_put(bucket, "k", b"v1")
        assert await js.kv_put(bucket, "k", b"v2") == rev + 1
        assert await js.kv_get(bucket, "k") == b"v2"
        with contextlib.suppress(Exception):
            await js.js.delete_key_value(bucket)
    finally:
        await js.close()
