"""The planner in a replay's simulated time (``python -m dynamo.replay --planner``): a hand-computed
throughput scale-up and scale-down, draining that loses no request, load-based scaling, determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dynamo.mocker.args import MockEngineArgs
from dynamo.planner.perf_interpolation import load_profile
from dynamo.replay.args import parse_config
from dynamo.replay.report import summarize
from dynamo.replay.simulation import ReplaySimulation
from dynamo.replay.workload import TraceRequest, synthetic
from dynamo.runtime.errors import ConfigError, InvalidArgument
from tests.support.procs import SHARED_DATA

pytestmark = pytest.mark.unit

PROFILE = SHARED_DATA / "dynamo" / "profiling" / "H200_TP1P_TP1D_llama3.1-8b-fp8"


def planner_config(*extra: str):
    return parse_config(["--input-tokens", "1", "--output-tokens", "1", "--request-count", "1", "--planner",
                         *extra]).planner_config()


def throughput_planner():
    # interval 10 s, last interval's load as the forecast, no correction: replicas =
    # ceil(n × isl / 10 s / prefill_thpt(isl) + n × osl / 10 s / decode_thpt(itl, isl + osl/2))
    return planner_config("--profile-results-dir", str(PROFILE), "--adjustment-interval", "10",
                          "--load-predictor", "constant", "--no-correction", "--max-gpu-budget", "0")


def fast_engine() -> MockEngineArgs:
    # Ten times faster than the profile the planner sizes with: one worker serves what the planner
    # thinks needs three, so every request of an interval completes inside it and is counted there.
    return MockEngineArgs(speedup_ratio=10.0)


def unique(t_ms: float, isl: int, osl: int, k: int) -> TraceRequest:
    return TraceRequest(t_ms, isl, osl, tuple(range(k * 8, k * 8 + 8)))  # no shared prefixes


def phases(long_tail: bool = False) -> list[TraceRequest]:
    """540 short requests in [0, 8.6 s], 100 in [10, 19.9 s], 10 in [25, 29.5 s]; with ``long_tail``, 30
    long ones arrive at 19.5 s, still decoding when the planner scales down at 20 s."""
    reqs = [unique(16.0 * i, 1000, 2, i) for i in range(540)]
    reqs += [unique(10_000.0 + 99.0 * i, 1000, 2, 1000 + i) for i in range(100)]
    if long_tail:
        reqs += [unique(19_500.0, 1000, 4000, 2000 + i) for i in range(30)]
    reqs += [unique(25_000.0 + 500.0 * i, 1000, 2, 3000 + i) for i in range(10)]
    return sorted(reqs, key=lambda r: r.arrival_ms)


def test_throughput_planner_scales_up_and_down_as_computed_by_hand():
    perf = load_profile(PROFILE)
    p_thpt = perf.prefill.throughput_per_gpu(1000)  # 26,268 tokens/s/GPU
    d_thpt = perf.decode.best_throughput_per_gpu(0.05, 1000 + 2 / 2)  # 16,065 tokens/s/GPU at ITL 50 ms
    first = 540 * 1000 / 10 / p_thpt + 540 * 2 / 10 / d_thpt  # 2.06 workers
    second = 100 * 1000 / 10 / p_thpt + 100 * 2 / 10 / d_thpt  # 0.38 workers
    assert (math.ceil(first), math.ceil(second)) == (3, 1)
    sim = ReplaySimulation(phases(), engine_args=fast_engine(), num_workers=1, trace_block_size=128,
                           planner=throughput_planner(), planner_perf=perf, worker_startup_ms=2000.0)
    res = sim.run()
    assert all(r.status == "completed" for r in res.records)
    # t=10 s: 2 more start; t=12 s: they serve; t=20 s: the newest two are drained (idle: gone at once)
    assert [(t, s, st, d) for t, s, st, d in res.fleet.points] == [
        (0.0, 1, 0, 0), (10_000.0, 1, 2, 0), (12_000.0, 3, 0, 0), (20_000.0, 1, 0, 0)]
    workers_of = [{r.worker for r in res.records if lo <= r.arrival_ms < hi}
                  for lo, hi in ((0, 12_000), (12_000, 20_000), (20_000, 1e9))]
    assert workers_of == [{0}, {0, 1, 2}, {0}]
    summary = summarize(res, 0.0)
    end_s = res.duration_ms / 1000
    assert summary["worker_seconds"] == pytest.approx(1 * 10 + 3 * 10 + 1 * (end_s - 20))
    assert summary["peak_workers"] == 3
    assert (summary["scale_up_workers"], summary["scale_down_workers"]) == (2, 2)


def test_scale_down_drains_and_loses_no_request():
    perf = load_profile(PROFILE)
    sim = ReplaySimulation(phases(long_tail=True), engine_args=fast_engine(), num_workers=1,
                           router_mode="kv_router", trace_block_size=128, planner=throughput_planner(),
                           planner_perf=perf)
    res = sim.run()
    assert [r.status for r in res.records] == ["completed"] * len(res.records)
    assert all(r.tokens == r.output_length for r in res.records)
    long = [r for r in res.records if r.output_length == 4000]
    drained = {1, 2}
    on_drained = [r for r in long if r.worker in drained]
    assert on_drained and all(r.last_token_ms > 20_000 for r in on_drained)  # finished while draining
    after = {r.worker for r in res.records if r.arrival_ms > 20_000}
    assert after == {0}  # a draining worker takes no new request
    points = res.fleet.points
    at_20 = next(p for p in points if p[0] == 20_000.0)
    assert at_20[1] == 1 and at_20[3] == 2  # one serving, two draining
    assert points[-1][1:] == (1, 0, 0)  # both retired once idle
    retired = [p[0] for p in points if p[0] > 20_000.0]
    assert max(r.last_token_ms for r in on_drained) in retired
    # their cached blocks left the router's index; the serving worker's are there
    assert {k[0] for k in sim.policy.indexer.workers()} == {0}


def _burst_then_trickle(seed: int) -> list[TraceRequest]:
    """30 s at 20 req/s (more than one worker serves within 300 ms TTFT), then 60 s at 0.5 req/s."""
    burst = synthetic(2000, 200, 600, request_rate=20, block_size=128, seed=seed)
    trickle = [unique(burst[-1].arrival_ms + 2000.0 * (i + 1), 2000, 200, 10_000 + i) for i in range(30)]
    return burst + trickle


def _load_based(seed: int):
    # Round robin: every new worker gets requests, so the scaler soon has a model of each (a scale-down
    # needs an estimate from every engine; with the KV router's ties an idle pool sends the trickle to
    # one worker, and a worker that started after the burst never gets one: the pool holds).
    reqs = _burst_then_trickle(seed)
    cfg = planner_config("--no-enable-throughput-scaling", "--enable-loadbased-scaling", "--ttft", "300", "--isl", "2000",
                         "--itl", "30", "--max-gpu-budget", "8")
    return ReplaySimulation(reqs, num_workers=1, router_mode="round_robin", trace_block_size=128, seed=seed,
                            planner=cfg).run()


def test_load_based_planner_scales_up_under_overload_and_back_down():
    res = _load_based(0)
    assert all(r.status == "completed" for r in res.records)
    summary = summarize(res, 0.0, ttft_ms=300, itl_ms=30)
    assert summary["peak_workers"] >= 2
    assert summary["final_serving_workers"] == 1  # the load is gone: down to --min-endpoint
    assert summary["worker_seconds"] < summary["peak_workers"] * res.duration_ms / 1000
    static = summarize(ReplaySimulation(_burst_then_trickle(0), num_workers=1, router_mode="round_robin",
                                        trace_block_size=128).run(),
                       0.0, ttft_ms=300, itl_ms=30)
    assert summary["sla_attainment"] > static["sla_attainment"]


def test_planner_replay_is_deterministic_under_a_seed():
    a, b = _load_based(3), _load_based(3)
    assert [dataclasses.astuple(r) for r in a.records] == [dataclasses.astuple(r) for r in b.records]
    assert a.fleet.points == b.fleet.points and len(a.fleet.points) > 2


def test_sla_attainment_counts_both_targets():
    reqs = [unique(0.0, 1000, 1, 0), unique(0.0, 1000, 50, 1)]
    res = ReplaySimulation(reqs, num_workers=1, trace_block_size=128).run()
    ttft = [r.ttft_ms for r in res.records]
    itl = (res.records[1].last_token_ms - res.records[1].first_token_ms) / 49
    both = summarize(res, 0.0, ttft_ms=max(ttft) + 1, itl_ms=itl + 0.01)
    assert both["sla_attainment"] == 1.0
    tight = summarize(res, 0.0, ttft_ms=max(ttft) + 1, itl_ms=itl - 0.01)
    assert (tight["sla_attainment"], tight["sla_itl_attainment"], tight["sla_ttft_attainment"]) == (0.5, 0.5, 1.0)
    assert summarize(res, 0.0)["worker_seconds"] == pytest.approx(res.duration_ms / 1000)


@pytest.mark.parametrize("flags, message", [
    (["--planner"], "--profile-results-dir"),
    (["--planner", "--no-enable-throughput-scaling"], "nothing to do"),
    (["--planner", "--no-enable-throughput-scaling", "--enable-loadbased-scaling", "--min-endpoint", "0"],
     "--min-endpoint >= 1"),
    (["--planner", "--enable-loadbased-scaling", "--no-enable-throughput-scaling", "--worker-startup-delay",
      "-1"], "--worker-startup-delay"),
])
def test_bad_planner_flags_are_config_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--input-tokens", "1", "--output-tokens", "1", "--request-count", "1", *flags])


def test_throughput_planner_without_a_profile_is_an_invalid_argument():
    with pytest.raises(InvalidArgument, match="profile"):
        ReplaySimulation([unique(0.0, 10, 1, 0)], planner=throughput_planner(), planner_perf=None)
