"""Frontend state under worker churn: an in-process frontend on the ``mem`` store, real serving runtimes
registering model cards, workers joining and leaving. Everything keyed by worker or namespace must go
back to its baseline."""

from __future__ import annotations

import pytest

from dynamo.frontend.args import parse_config
from dynamo.frontend.service import build_frontend
from dynamo.kv_router.protocols import ActiveLoad
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.llm.protocols.model_card import RuntimeConfig
from dynamo.runtime import DistributedRuntime
from tests.support.deploy import QWEN
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration

MODEL = "churn-model"
CARD = build_card(str(QWEN), MODEL, kv_cache_block_size=16,
                  runtime_config=RuntimeConfig(total_kv_blocks=100, max_num_batched_tokens=1000))


async def start_worker(namespace: str) -> DistributedRuntime:
    rt = await DistributedRuntime.create("mem")

    async def handler(request, ctx):
        yield {}

    ep = rt.endpoint(f"dyn://{namespace}.backend.generate")
    await ep.start_serving(handler, instance_id=rt.instance_id)
    await register_llm(ep, CARD, rt.instance_id)
    return rt


def series(gauge) -> int:
    return sum(len(m.samples) for m in gauge.collect())


async def test_worker_and_namespace_churn_returns_frontend_state_to_baseline():
    frontend_rt = await DistributedRuntime.create("mem")
    frontend = await build_frontend(parse_config([]), frontend_rt)
    manager, loads, metrics = frontend.manager, frontend.loads, frontend.metrics
    stable = await start_worker("stable")
    others: list[DistributedRuntime] = []
    worker_gauges = (metrics.worker_kv_used_blocks, metrics.worker_active_decode_blocks,
                     metrics.worker_active_prefill_tokens)

    def instances(namespace: str) -> set[int]:
        ws = manager.sets.get(MODEL, {}).get(namespace)
        return set(ws.instances) if ws is not None else set()

    def report(wid: int) -> None:
        # A full worker: busy by KV usage (90 > 1.0 x 100 blocks is false; 150 is true).
        loads.apply(ActiveLoad(worker_id=wid, dp_rank=0, kv_used_blocks=150, active_decode_blocks=150,
                               active_prefill_tokens=0))

    try:
        await async_wait_for(lambda: instances("stable") == {stable.instance_id}, 5, what="stable worker")
        engine = manager.sets[MODEL]["stable"].engine
        report(stable.instance_id)
        baseline = [series(g) for g in worker_gauges]
        assert baseline == [1, 1, 1] and engine.monitor.busy_workers() == {stable.instance_id}
        for i in range(3):
            # One worker joins the stable set, one comes up in a namespace of its own; both leave.
            joiner = await start_worker("stable")
            loner = await start_worker(f"ns{i}")
            others += [joiner, loner]
            ns, jid, lid = f"ns{i}", joiner.instance_id, loner.instance_id
            await async_wait_for(lambda ns=ns, jid=jid, lid=lid: jid in instances("stable")
                                 and instances(ns) == {lid}, 5, what="workers up")
            report(joiner.instance_id)
            report(loner.instance_id)
            assert engine.monitor.busy_workers() == {stable.instance_id, joiner.instance_id}
            assert f"ns{i}" in loads._tasks
            await joiner.shutdown(grace_period=0)
            await loner.shutdown(grace_period=0)
            await async_wait_for(lambda ns=ns: instances("stable") == {stable.instance_id}
                                 and not instances(ns), 5, what="workers removed")
            # A late report from a removed worker must not re-create anything.
            report(joiner.instance_id)
            report(loner.instance_id)
            assert [series(g) for g in worker_gauges] == baseline
            assert engine.monitor.busy_workers() == {stable.instance_id}
            assert set(engine.monitor._workers) == {stable.instance_id}
            assert set(loads._tasks) == {"stable"} and set(loads._subs) <= {"stable"}
            assert [ep[0] for ep in manager._clients] == ["stable"]
    finally:
        await frontend.close()
        for rt in [stable, *others, frontend_rt]:
            await rt.shutdown(grace_period=0)
