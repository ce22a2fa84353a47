"""KvRouter state under worker churn, on the in-process ``mem`` store with real serving runtimes."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.kv_router.config import KvRouterConfig
from dynamo.kv_router.metrics import RouterMetrics
from dynamo.kv_router.protocols import KvCacheEvent, KvStored, RouterEvent, StoredBlock
from dynamo.kv_router.router import ActiveSequenceEvent, AddRequest, KvRouter
from dynamo.llm.protocols.engine import PreprocessedRequest
from dynamo.llm.protocols.model_card import RuntimeConfig
from dynamo.runtime import DistributedRuntime, errors
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


def series(gauge) -> int:
    return sum(len(m.samples) for m in gauge.collect())


async def test_removed_workers_leave_no_metric_series_or_bookings():
    router_rt = await DistributedRuntime.create("mem")
    workers: list[DistributedRuntime] = []
    try:
        client = await router_rt.endpoint(ENDPOINT).client()
        metrics = RouterMetrics()
        router = KvRouter(client, 16, metrics=metrics)
        for i in range(4):
            rt = await start_worker()
            workers.append(rt)
            wid = rt.instance_id
            await async_wait_for(lambda wid=wid: wid in client.instance_ids(), 5, what="worker live")
            # Another router replica books requests on two dp ranks of the worker.
            for rank in (0, 1):
                router.apply_replica_event(ActiveSequenceEvent(f"r{i}-{rank}", wid, rank, 99,
                                                               AddRequest([1, 2], 32, 0)))
            assert series(metrics.active_blocks) == 2 and series(metrics.active_prefill) == 2
            await rt.shutdown(grace_period=0)
            await async_wait_for(lambda wid=wid: wid not in client.instance_ids(), 5, what="worker removed")
            assert series(metrics.active_blocks) == 0 and series(metrics.active_prefill) == 0
            # Late replica traffic about the removed worker re-creates nothing.
            router.apply_replica_event(ActiveSequenceEvent(f"late{i}", wid, 0, 99, AddRequest([3], 16, 0)))
            router.apply_replica_event(ActiveSequenceEvent(f"r{i}-0", wid, 0, 99, "Free"))
            assert series(metrics.active_blocks) == 0 and series(metrics.active_prefill) == 0
            assert router.sequences.active_prefill_tokens() == {}
        await client.close()
    finally:
        for rt in [*workers, router_rt]:
            await rt.shutdown(grace_period=0)


async def saturated_router(router_rt: DistributedRuntime, worker: DistributedRuntime, **cfg) -> KvRouter:
    client = await router_rt.endpoint(ENDPOINT).client()
    await client.wait_for_instances(5)
    config = KvRouterConfig(router_queue_threshold=1.0, **cfg)
    router = KvRouter(client, 16, config, runtime_config=lambda _wid: RuntimeConfig(max_num_batched_tokens=10))
    # Another replica's 100-token prefill saturates the only worker (100 > 1.0 x 10).
    router.apply_replica_event(ActiveSequenceEvent("busy", worker.instance_id, 0, 99, AddRequest(None, 100, 0)))
    return router


def request(i: int) -> PreprocessedRequest:
    return PreprocessedRequest(model="m", token_ids=list(range(i, i + 20)), request_id=f"q{i}")


async def test_router_queue_rejects_when_full_with_503():
    router_rt = await DistributedRuntime.create("mem")
    worker = await start_worker()
    try:
        router = await saturated_router(router_rt, worker, router_queue_max_size=2, router_queue_timeout_secs=30)
        parked = [asyncio.get_running_loop().create_task(router.generate(request(i))) for i in range(2)]
        await async_wait_for(lambda: len(router._queue) == 2, 5, what="two parked requests")
        with pytest.raises(errors.ResourceExhausted) as info:
            await router.generate(request(9))
        assert errors.http_status(info.value) == 503
        assert "router queue is full" in str(info.value) and "--router-queue-max-size" in str(info.value)
        for t in parked:
            t.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
        assert len(router._queue) == 0
    finally:
        await worker.shutdown(grace_period=0)
        await router_rt.shutdown(grace_period=0)


async def test_router_queue_deadline_rejects_with_503():
    router_rt = await DistributedRuntime.create("mem")
    worker = await start_worker()
    try:
        router = await saturated_router(router_rt, worker, router_queue_timeout_secs=0.3)
        with pytest.raises(errors.ResourceExhausted) as info:
            await asyncio.wait_for(router.generate(request(1)), 5)
        assert errors.http_status(info.value) == 503
        assert "--router-queue-timeout" in str(info.value)
        assert len(router._queue) == 0
    finally:
        await worker.shutdown(grace_period=0)
        await router_rt.shutdown(grace_period=0)


async def test_parked_requests_go_to_a_worker_that_joins_at_once():
    """A burst parked behind a saturated pool leaves the queue as soon as a new worker registers, all of
    it that fits (not one request per prefill completion, nor at the waiters' 1-s rechecks)."""
    router_rt = await DistributedRuntime.create("mem")
    busy = await start_worker()
    joined: DistributedRuntime | None = None
    try:
        client = await router_rt.endpoint(ENDPOINT).client()
        await client.wait_for_instances(5)
        config = KvRouterConfig(router_queue_threshold=1.0, router_queue_timeout_secs=30)
        # The busy worker batches 10 tokens, so its other replica's 1000-token prefill saturates it; a
        # newcomer batches 1000, room for every parked 20-token request.
        router = KvRouter(client, 16, config, runtime_config=lambda wid: RuntimeConfig(
            max_num_batched_tokens=10 if wid == busy.instance_id else 1000))
        router.apply_replica_event(ActiveSequenceEvent("busy", busy.instance_id, 0, 99, AddRequest(None, 1000, 0)))
        parked = [asyncio.get_running_loop().create_task(router.generate(request(i))) for i in range(5)]
        await async_wait_for(lambda: len(router._queue) == 5, 5, what="five parked requests")
        joined = await start_worker()
        t0 = asyncio.get_running_loop().time()
        routed = await asyncio.wait_for(asyncio.gather(*parked), 5)
        assert asyncio.get_running_loop().time() - t0 < 0.5  # the waiters' own rechecks come after 1 s
        assert {wid for wid, _ in routed} == {joined.instance_id}
        for _, stream in routed:
            await stream.aclose()
        await client.close()
    finally:
        for rt in (busy, joined, router_rt):
            if rt is not None:
                await rt.shutdown(grace_period=0)
