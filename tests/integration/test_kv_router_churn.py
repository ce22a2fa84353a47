"""KvRouter state under worker churn, on the in-process ``mem`` store with real serving runtimes."""

from __future__ import annotations

import pytest

from dynamo.kv_router.protocols import KvCacheEvent, KvStored, RouterEvent, StoredBlock
from dynamo.kv_router.router import KvRouter
from dynamo.runtime import DistributedRuntime
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration

ENDPOINT = "churn/backend/generate"


def stored(worker_id: int, event_id: int, first_hash: int, dp_rank: int = 0) -> RouterEvent:
    blocks = [StoredBlock(first_hash + i, first_hash + 100 + i) for i in range(3)]
    return RouterEvent(worker_id, KvCacheEvent(event_id, KvStored(None, blocks), dp_rank=dp_rank))


async def start_worker() -> DistributedRuntime:
    rt = await DistributedRuntime.create("mem")

    async def handler(request, ctx):
        yield {}

    await rt.endpoint(f"dyn://{ENDPOINT.replace('/', '.')}").start_serving(handler)
    return rt


async def test_late_events_from_a_removed_worker_leave_nothing_in_the_index():
    router_rt = await DistributedRuntime.create("mem")
    workers: list[DistributedRuntime] = []
    try:
        client = await router_rt.endpoint(ENDPOINT).client()
        router = KvRouter(client, 16)
        baseline_nodes = router.indexer.num_nodes
        for round_ in range(5):  # five graceful restarts
            rt = await start_worker()
            workers.append(rt)
            wid = rt.instance_id
            await async_wait_for(lambda wid=wid: wid in client.instance_ids(), 5, what="worker live")
            assert router.apply_event(stored(wid, 0, 1000 * (round_ + 1))) == "ok"
            assert router.indexer.num_blocks(wid) == 3
            await rt.shutdown(grace_period=0)
            await async_wait_for(lambda wid=wid: wid not in client.instance_ids(), 5, what="worker removed")
            assert router.indexer.num_blocks(wid) == 0
            # The draining worker keeps publishing after its key is gone.
            router.apply_event(stored(wid, 1, 1000 * (round_ + 1) + 10))
            router.apply_event(stored(wid, 2, 1000 * (round_ + 1) + 20, dp_rank=1))
            assert router.indexer.num_blocks(wid) == 0
            assert all(key[0] != wid for key in router.indexer.workers())
        # A worker never seen live is not indexed either.
        router.apply_event(stored(0xDEAD, 0, 50_000))
        assert router.indexer.workers() == []
        assert router.indexer.num_nodes == baseline_nodes
        await client.close()
    finally:
        for rt in [*workers, router_rt]:
            await rt.shutdown(grace_period=0)
