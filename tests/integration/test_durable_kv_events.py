"""Durable KV events (``--durable-kv-events``) on a real nats-server with JetStream.

Workers are ``WorkerPublisher`` objects publishing random stored/removed events durably; their own
local index is the truth a router's index must equal. Routers are real ``KvRouter`` objects reading
the stream.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from dynamo.kv_router.config import KvRouterConfig
from dynamo.kv_router.durable import kv_subject
from dynamo.kv_router.indexer import RadixTree
from dynamo.kv_router.protocols import KvCacheEvent, KvRemoved, KvStored, RouterEvent, StoredBlock
from dynamo.kv_router.publisher import WorkerPublisher
from dynamo.kv_router.router import KvRouter
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.event_plane.jetstream import SNAPSHOT_OBJECT, JetStream, snapshot_bucket, stream_name
from tests.integration.nats_fixtures import nats_server  # noqa: F401  (fixture)
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration

COMPONENT = "backend"


def held(tree: RadixTree) -> dict[tuple[int, int], frozenset[int]]:
    """Block hashes each (worker, dp rank) holds: the state two indexes must agree on."""
    out = {}
    for key in tree.workers():
        blocks = frozenset(tree.block_hashes(*key))
        if blocks:
            out[key] = blocks
    return out


class FakeWorker:
    """Random but valid KV events: chains stored under held parents, removals of held blocks."""

    def __init__(self, pub: WorkerPublisher, seed: int) -> None:
        self.pub = pub
        self.rng = random.Random(seed)
        self.blocks: list[int] = []
        self.event_id = 0
        self.history: list[RouterEvent] = []  # everything ever published, in order

    def step(self) -> None:
        rng = self.rng
        if self.blocks and rng.random() < 0.3:
            gone = rng.sample(self.blocks, k=min(len(self.blocks), rng.randint(1, 3)))
            for h in gone:
                self.blocks.remove(h)
            data: KvStored | KvRemoved = KvRemoved(block_hashes=gone)
        else:
            parent = rng.choice(self.blocks) if self.blocks and rng.random() < 0.7 else None
            new = [rng.getrandbits(62) for _ in range(rng.randint(1, 4))]
            self.blocks.extend(new)
            data = KvStored(parent_hash=parent, blocks=[StoredBlock(h, rng.getrandbits(62)) for h in new])
        event = RouterEvent(self.pub.worker_id, KvCacheEvent(self.event_id, data))
        self.history.append(event)
        self.pub.kv_event(event)
        self.event_id += 1

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


@pytest.fixture
async def cluster(nats_server, monkeypatch):  # noqa: F811  (fixture)
    monkeypatch.setenv("NATS_SERVER", nats_server.url)
    ns = f"durable-{uuid.uuid4().hex[:8]}"
    rt = await DistributedRuntime.create("mem")
    rt.durable_kv_events = True
    workers = [FakeWorker(await WorkerPublisher.create(rt, ns, COMPONENT, wid), wid) for wid in (0x11, 0x22)]
    routers: list[KvRouter] = []

    async def start_router(**cfg) -> KvRouter:
        client = await rt.endpoint(f"{ns}.{COMPONENT}.generate").client()
        router = KvRouter(client, 16, KvRouterConfig(durable_kv_events=True, **cfg))
        await router.start_events(rt, ns, COMPONENT)
        routers.append(router)
        return router

    yield ns, rt, workers, start_router
    for router in routers:
        await router.close()
    for w in workers:
        await w.pub._kv_pub.close()
    await rt.shutdown(grace_period=0)


def truth(workers: list[FakeWorker]) -> dict[tuple[int, int], frozenset[int]]:
    out = {}
    for w in workers:
        out.update(held(w.pub._index))
    return out


async def caught_up(router: KvRouter, workers: list[FakeWorker], timeout: float = 15.0) -> None:
    for w in workers:
        await w.pub._kv_pub.flush()
    expected = truth(workers)
    await async_wait_for(lambda: held(router.indexer) == expected, timeout=timeout,
                         what="router index equal to the workers' caches")


async def test_router_restarted_mid_stream_resumes_with_index_equal_to_workers(cluster):
    _, _, workers, start_router = cluster
    for w in workers:
        w.steps(100)
    first = await start_router()
    publishing = asyncio.get_running_loop().create_task(_publish_slowly(workers, 200))
    await async_wait_for(lambda: held(first.indexer) != {}, what="first router consuming")
    await asyncio.sleep(0.05)  # let a few more events land while the first router is up
    await first.close()  # restarted mid-stream: events keep coming while no router runs
    await publishing
    second = await start_router()
    await caught_up(second, workers)
    assert sum(len(b) for b in truth(workers).values()) > 50


async def _publish_slowly(workers: list[FakeWorker], n: int) -> None:
    for _ in range(n):
        for w in workers:
            w.step()
        await asyncio.sleep(0.001)  # interleave with the consumers, as a live engine would


async def test_snapshot_plus_replay_equals_full_replay_and_purges_the_stream(cluster, nats_server):  # noqa: F811
    ns, rt, workers, start_router = cluster
    first = await start_router(router_snapshot_threshold=50)
    for w in workers:
        w.steps(300)
    await caught_up(first, workers)
    assert first._durable.snapshots_written >= 5
    js = JetStream(await rt.nats_connection())
    stream = stream_name(kv_subject(ns, COMPONENT))
    assert await js.stream_messages(stream) < 600  # purged below the newest snapshot
    assert await js.get_object(snapshot_bucket(ns, COMPONENT), SNAPSHOT_OBJECT) is not None
    for w in workers:
        w.steps(40)  # events after the newest snapshot
    await caught_up(first, workers)
    second = await start_router(router_snapshot_threshold=50)
    assert second._durable.loaded_snapshot is not None
    await caught_up(second, workers)
    # ... and equal to replaying every event ever published into an empty index
    full = RadixTree()
    for w in workers:
        for ev in w.history:
            full.apply_event(ev)
    assert held(second.indexer) == held(full)


async def test_reset_states_empties_stream_snapshots_and_index(cluster):
    ns, rt, workers, start_router = cluster
    first = await start_router(router_snapshot_threshold=30)
    for w in workers:
        w.steps(100)
    await caught_up(first, workers)
    await first.close()
    fresh = await start_router(router_reset_states=True)
    js = JetStream(await rt.nats_connection())
    assert await js.stream_messages(stream_name(kv_subject(ns, COMPONENT))) == 0
    assert await js.get_object(snapshot_bucket(ns, COMPONENT), SNAPSHOT_OBJECT) is None
    await asyncio.sleep(0.3)  # a fetch round: nothing may arrive
    assert held(fresh.indexer) == {}


async def test_nats_restart_loses_no_event(cluster, nats_server):  # noqa: F811
    _, _, workers, start_router = cluster
    router = await start_router()
    for w in workers:
        w.steps(50)
    await caught_up(router, workers)
    await asyncio.to_thread(nats_server.stop)
    for w in workers:
        w.steps(50)  # published while NATS is down: held by the workers, retried
    await asyncio.to_thread(nats_server.start)
    for w in workers:
        w.steps(50)
    await caught_up(router, workers, timeout=30)
