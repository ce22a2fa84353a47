"""The router-accuracy SLI: predicted vs engine-reported cached tokens, with a real mocker engine.

A KvRouter on the in-process ``mem`` runtime routes to a served mocker engine whose KV events feed the
router's index directly (as the event-plane consumer would). While the router hears every event its
prediction equals the engine's count; after it loses the worker's events its predictions fall short
and the SLI says so.
"""

from __future__ import annotations

import pytest

from dynamo.kv_router.metrics import RouterMetrics
from dynamo.kv_router.router import KvRouter
from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest, StopConditions
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.engine import MockerEngine
from dynamo.runtime import DistributedRuntime
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration

ENDPOINT = "sli/backend/generate"
BS = 16


def sample(metric, name: str, **labels: str) -> float:
    for m in metric.collect():
        for s in m.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def run(router: KvRouter, tokens: list[int], rid: str) -> LLMEngineOutput:
    req = PreprocessedRequest(model="m", token_ids=tokens, request_id=rid,
                              stop_conditions=StopConditions(max_tokens=2))
    _, stream = await router.generate(req)
    last = None
    async for item in stream:
        last = item
    assert last is not None
    return last


async def test_router_accuracy_sli_tracks_engine_cached_tokens():
    router_rt = await DistributedRuntime.create("mem")
    worker_rt = await DistributedRuntime.create("mem")
    engine = None
    try:
        client = await router_rt.endpoint(ENDPOINT).client(LLMEngineOutput)
        metrics = RouterMetrics()
        router = KvRouter(client, BS, metrics=metrics, model="m")
        wid = worker_rt.instance_id

        def kv_sink(events):
            for ev in events:
                router.apply_event(ev)

        engine = MockerEngine(MockEngineArgs.from_dict({"block_size": BS, "speedup_ratio": 100.0}), wid,
                              kv_sink=kv_sink)
        engine.start()
        await worker_rt.endpoint(f"dyn://{ENDPOINT.replace('/', '.')}").start_serving(engine.generate, request_type=PreprocessedRequest)
        await async_wait_for(lambda: wid in client.instance_ids(), 5, what="worker live")
        prefix = list(range(100, 100 + 4 * BS))  # four full blocks

        first = await run(router, [*prefix, 1, 2, 3], "a")
        assert first.completion_usage.cached_tokens == 0
        second = await run(router, [*prefix, 7, 8], "b")
        assert second.completion_usage.cached_tokens == 4 * BS
        # A fully cached prompt: the engine recomputes its last block; the prediction is capped alike.
        third = await run(router, prefix, "c")
        assert third.completion_usage.cached_tokens == 3 * BS

        m = metrics
        assert sample(m.accuracy_outcomes, "dynamo_component_router_accuracy_requests_total",
                      model="m", outcome="exact") == 3
        assert sample(m.accuracy_predicted, "dynamo_component_router_accuracy_predicted_cached_tokens_total") \
            == sample(m.accuracy_reported, "dynamo_component_router_accuracy_reported_cached_tokens_total") == 7 * BS

        # The router loses the worker's events (a dropped subscription): it now under-predicts.
        router.indexer.clear_worker(wid)
        fourth = await run(router, [*prefix, 9], "d")
        assert fourth.completion_usage.cached_tokens == 4 * BS
        assert sample(m.accuracy_outcomes, "dynamo_component_router_accuracy_requests_total",
                      model="m", outcome="under") == 1
        assert sample(m.accuracy_reported, "dynamo_component_router_accuracy_reported_cached_tokens_total") \
            - sample(m.accuracy_predicted, "dynamo_component_router_accuracy_predicted_cached_tokens_total") == 4 * BS
        # The error histogram put that request below zero: -64 falls in the (-256, -64] bucket.
        assert sample(m.accuracy_error, "dynamo_component_router_accuracy_error_tokens_bucket", le="-64.0") == 1
        assert sample(m.accuracy_error, "dynamo_component_router_accuracy_error_tokens_bucket", le="0.0") == 4
        await client.close()
    finally:
        if engine is not None:
            await engine.stop()
        for rt in (worker_rt, router_rt):
            await rt.shutdown(grace_period=0)
