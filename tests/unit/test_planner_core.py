"""The planner's steps over the real virtual connector (in-memory store) and a fixed traffic source:
throughput decisions applied or advisory, the pending rule, the load-based floor, trace warm start."""

from __future__ import annotations

import math
import uuid

import pytest

from dynamo.planner.args import parse_config
from dynamo.planner.connectors.base import TargetReplica
from dynamo.planner.connectors.virtual import VirtualConnector, VirtualConnectorClient
from dynamo.planner.core import Planner
from dynamo.planner.load_scaler import Direction
from dynamo.planner.perf_interpolation import load_profile
from dynamo.planner.throughput import IntervalStats
from dynamo.planner.warmup import bucket, read_trace
from dynamo.runtime.discovery.mem import MemoryStore
from dynamo.runtime.errors import ConfigError
from tests.support.procs import SHARED_DATA

pytestmark = pytest.mark.unit

PROFILE = SHARED_DATA / "dynamo" / "profiling" / "H200_TP1P_TP1D_llama3.1-8b-fp8"


class FixedTraffic:
    def __init__(self, *stats: IntervalStats) -> None:
        self.stats = list(stats)

    async def observe(self, interval_s: float) -> IntervalStats:
        return self.stats.pop(0)

    async def close(self) -> None:
        pass


def busy(n: float) -> IntervalStats:
    return IntervalStats(num_requests=n, isl=2134, osl=150, ttft_s=math.nan, itl_s=math.nan, request_duration_s=3)


@pytest.fixture
async def store():
    s = MemoryStore(space=f"planner-{uuid.uuid4().hex}")  # a private space: one "etcd" per test
    await s.start()
    yield s
    await s.close()


def config(*extra: str):
    c = parse_config(["--environment", "virtual", "--mode", "disagg", "--load-predictor", "constant",
                      "--adjustment-interval", "60", "--profile-results-dir", str(PROFILE), "--max-gpu-budget", "64",
                      *extra])
    c.validate()
    return c


async def test_throughput_step_applies_through_the_connector(store):
    conn = VirtualConnector(store, "ns")
    await conn.start()
    planner = Planner(config("--no-correction"), conn, FixedTraffic(busy(6000), busy(6000)), load_profile(PROFILE))
    decision = await planner.throughput_step()
    assert decision.prefill == 5  # 6000 × 2134 / 60 s over 42,707 tokens/s/GPU = 4.997
    assert await conn.current_replicas() == {"prefill": 5, "decode": decision.decode}
    assert conn.decision_id == 1
    # not acknowledged yet: the next step computes but does not issue a new decision
    planner.traffic = FixedTraffic(busy(12000))
    await planner.throughput_step()
    assert conn.decision_id == 1
    client = VirtualConnectorClient(store, "ns")
    await client.complete(await client.get())
    planner.traffic = FixedTraffic(busy(12000))
    await planner.throughput_step()
    assert conn.decision_id == 2 and (await conn.current_replicas())["prefill"] == 10


async def test_advisory_mode_changes_nothing(store):
    conn = VirtualConnector(store, "ns")
    await conn.start()
    planner = Planner(config("--no-operation"), conn, FixedTraffic(busy(6000)), load_profile(PROFILE))
    decision = await planner.throughput_step()
    assert decision.prefill == 5
    assert conn.decision_id == 0 and await store.get("v1/planner/ns/decision") is None
    text = planner.metrics.render().decode()
    assert 'dynamo_planner_decisions_total{applied="false",direction="up",pool="prefill",source="throughput"} 1.0' \
        in text
    assert 'dynamo_planner_desired_replicas{pool="prefill"} 5.0' in text


async def test_with_load_scaling_throughput_only_sets_the_floor(store):
    conn = VirtualConnector(store, "ns")
    await conn.start()
    c = config("--enable-loadbased-scaling", "--mode", "agg")
    planner = Planner(c, conn, FixedTraffic(busy(6000)), load_profile(PROFILE))
    decision = await planner.throughput_step()
    assert conn.decision_id == 0  # nothing applied by the throughput step
    assert planner.state.throughput_floor == {"decode": decision.decode}
    # no engine estimates: HOLD, but below the floor the load step climbs one at a time
    await conn.set_component_replicas([])  # decision 1 with no pools: the connector knows nothing yet
    await VirtualConnectorClient(store, "ns").complete(await VirtualConnectorClient(store, "ns").get())
    assert await planner.load_step() == {"decode": Direction.HOLD}
    assert (await conn.current_replicas())["decode"] == 1


def test_warmup_trace_buckets():
    reqs = read_trace(SHARED_DATA / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv")
    assert reqs[0][0] == 0 and reqs[0][1:] == (374, 44)
    series = bucket(reqs, 60)
    assert sum(n for n, _, _ in series) == len(reqs)
    first = [r for r in reqs if r[0] < 60]
    assert series[0][1] == pytest.approx(sum(r[1] for r in first) / len(first))
    with pytest.raises(ConfigError, match="not found"):
        read_trace("/no/such/trace.csv")


def fpm(worker_id: int, prefill: float, kv: float, waiting: int = 0) -> dict:
    """Ten passes of ``prefill`` prompt tokens + 4 decode tokens at 0.01 + 1e-5·prefill + 1e-4·kv s each."""
    wall = 0.01 + 1e-5 * prefill + 1e-4 * kv
    return {"worker_id": worker_id, "dp_rank": 0, "passes": 10, "window_s": 9 * wall,
            "scheduled_tokens": int(10 * (prefill + 4)), "emitted_tokens": 40, "kv_used_blocks": kv,
            "num_waiting": waiting, "num_running": 4}


def feed(planner: Planner, worker_id: int, waiting: int) -> None:
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            planner.observe_fpm("decode", fpm(worker_id, p, kv))
    planner.observe_fpm("decode", fpm(worker_id, 0, 10, waiting))  # the state estimates are taken from


async def test_load_step_adds_several_and_waits_out_the_scale_down_window(store):
    conn = VirtualConnector(store, "ns")
    await conn.start()
    ops = VirtualConnectorClient(store, "ns")
    c = parse_config(["--environment", "virtual", "--mode", "agg", "--no-enable-throughput-scaling",
                      "--enable-loadbased-scaling", "--loadbased-max-step-up", "2", "--loadbased-scale-down-window",
                      "10", "--max-gpu-budget", "8", "--isl", "1000", "--max-num-batched-tokens", "512"])
    c.validate()
    planner = Planner(c, conn, None, None)
    await conn.set_component_replicas([TargetReplica("decode", 1)])
    await ops.complete(await ops.get())
    # 49 queued prompts of 1000 tokens: TTFT ≈ 2.5 s, 5x the 0.5 s target → +4 wanted, capped at +2
    feed(planner, 1, waiting=49)
    assert await planner.load_step(now=0.0) == {"decode": Direction.UP}
    assert (await conn.current_replicas())["decode"] == 3
    await ops.complete(await ops.get())
    for wid in (1, 2, 3):
        feed(planner, wid, waiting=0)  # the burst is over: every engine is idle
    assert await planner.load_step(now=5.0) == {"decode": Direction.HOLD}  # calm for 5 s of the 10
    assert (await conn.current_replicas())["decode"] == 3
    assert conn.decision_id == 2
    assert await planner.load_step(now=10.5) == {"decode": Direction.DOWN}  # calm for a whole window
    assert (await conn.current_replicas())["decode"] == 2
    await ops.complete(await ops.get())
    planner.forget_workers("decode", {1, 2})
    assert await planner.load_step(now=11.5) == {"decode": Direction.DOWN}  # still calm: the next step at once
    assert (await conn.current_replicas())["decode"] == 1


def prefill_fpm(worker_id: int, tokens: float, waiting: int = 0) -> dict:
    """Two prefill passes of ``tokens`` prompt tokens (one timed: the window spans passes - 1) at
    16.5 ms + 15 µs per token, holding the prompts' KV blocks."""
    return {"worker_id": worker_id, "dp_rank": 0, "passes": 2, "window_s": 0.0165 + 1.5e-5 * tokens,
            "scheduled_tokens": int(2 * tokens), "emitted_tokens": 2, "kv_used_blocks": int(tokens / 8),
            "num_waiting": waiting, "num_running": 1}


async def test_disagg_load_step_scales_the_prefill_pool_within_the_shared_budget(store):
    conn = VirtualConnector(store, "ns")
    await conn.start()
    ops = VirtualConnectorClient(store, "ns")
    c = parse_config(["--environment", "virtual", "--mode", "disagg", "--no-enable-throughput-scaling",
                      "--enable-loadbased-scaling", "--max-gpu-budget", "3", "--ttft", "400", "--itl", "50",
                      "--isl", "100"])
    c.validate()
    observed = IntervalStats(num_requests=40, isl=3000, osl=4, ttft_s=math.nan, itl_s=math.nan, request_duration_s=1)
    planner = Planner(c, conn, None, None, load_traffic=FixedTraffic(observed, observed))
    await conn.set_component_replicas([TargetReplica("prefill", 1), TargetReplica("decode", 1)])
    await ops.complete(await ops.get())
    for tokens in (1000, 2000, 3000, 4000, 6000):
        planner.observe_fpm("prefill", prefill_fpm(1, tokens))
    # Ten prompts queued: with the frontend's 3000-token prompts (not --isl's 100) that is 33000 tokens,
    # four full 8192-token chunks and a bit, ~0.6 s: over the 0.4 s target.
    planner.observe_fpm("prefill", prefill_fpm(1, 8192, waiting=10))
    for kv in (10, 50, 100, 200, 400):
        planner.observe_fpm("decode", {"worker_id": 2, "dp_rank": 0, "passes": 10, "window_s": 9 * (0.005 + 1e-5 * kv),
                                       "scheduled_tokens": 10, "emitted_tokens": 10, "kv_used_blocks": kv,
                                       "num_waiting": 0, "num_running": 1})
    assert await planner.load_step(now=0.0) == {"prefill": Direction.UP, "decode": Direction.DOWN}
    assert await conn.current_replicas() == {"prefill": 2, "decode": 1}  # the decode pool at its minimum
    await ops.complete(await ops.get())
    # Still short, but a third prefill engine and the decode engine would be 4 GPUs of the budget's 3.
    assert (await planner.load_step(now=1.0))["prefill"] is Direction.UP
    assert await conn.current_replicas() == {"prefill": 2, "decode": 1}
