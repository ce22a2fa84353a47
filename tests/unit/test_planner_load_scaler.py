"""Load-based scaler: the pass-time regression, TTFT/ITL estimates by hand, and the decision's hysteresis."""

from __future__ import annotations

import math

import pytest

from dynamo.planner.load_scaler import (
    Direction,
    EngineEstimate,
    LatencyCorrection,
    LoadScaler,
    PassTimeModel,
    Sample,
    ScaleDownWindow,
    clamp_step,
    estimate,
    pool_ceiling,
    sample_from_report,
    up_step,
)

pytestmark = pytest.mark.unit


def wall(prefill: float, kv: float) -> float:
    return 0.01 + 1e-5 * prefill + 1e-4 * kv


def report(worker_id: int, prefill: float, kv: float, passes: int = 10, waiting: int = 0) -> dict:
    # 10 passes, each `prefill` prompt tokens plus 4 decode tokens
    # the window runs from the end of the first pass to the end of the last: passes - 1 whole passes
    return {"worker_id": worker_id, "dp_rank": 0, "passes": passes, "window_s": (passes - 1) * wall(prefill, kv),
            "scheduled_tokens": int(passes * (prefill + 4)), "emitted_tokens": passes * 4,
            "kv_used_blocks": kv, "num_waiting": waiting, "num_running": 4}


def test_sample_from_report():
    s = sample_from_report(report(1, 256, 100))
    assert s == Sample(256, 100, pytest.approx(wall(256, 100)))
    assert sample_from_report({"passes": 0, "window_s": 0.1}) is None
    # one pass alone times nothing (its window closes as it opens); two passes time one whole pass
    assert sample_from_report({"passes": 1, "window_s": 0.0, "scheduled_tokens": 3000, "emitted_tokens": 1}) is None
    two = sample_from_report({"passes": 2, "window_s": 0.17, "scheduled_tokens": 16384, "emitted_tokens": 2})
    assert two is not None and two.wall_s == pytest.approx(0.17) and two.prefill_tokens == pytest.approx(8191)


def test_regression_recovers_a_linear_pass_time():
    m = PassTimeModel(min_observations=5)
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            m.add(sample_from_report(report(1, p, kv)))
    assert m.ready
    assert m.predict(300, 50) == pytest.approx(wall(300, 50), rel=1e-6)


def test_repeated_points_share_a_bucket():
    m = PassTimeModel(max_samples=64, bucket=16)
    for _ in range(100):
        m.add(Sample(100, 10, 0.02))
    assert len(m) == 1
    for i in range(100):
        m.add(Sample(i * 32, 0, 0.02))
    assert len(m) == 64


def test_estimates_by_hand():
    m = PassTimeModel()
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            m.add(sample_from_report(report(1, p, kv)))
    # one waiting request + the new one, 1000 tokens each, chunk 512: 3 full chunks + 464 tokens
    ttft, itl = estimate(m, report(1, 0, 100, waiting=1), avg_isl=1000, chunk_tokens=512)
    assert itl == pytest.approx(wall(0, 100))
    assert ttft == pytest.approx(3 * wall(512, 100) + wall(464, 100))
    # a 50% KV hit rate halves the prompt work: 1000 tokens = 1 chunk + 488
    ttft_hit, _ = estimate(m, report(1, 0, 100, waiting=1), avg_isl=1000, chunk_tokens=512, kv_hit_rate=0.5)
    assert ttft_hit == pytest.approx(wall(512, 100) + wall(488, 100))


def test_prefill_engine_regresses_on_prompt_tokens_only():
    """A prefill engine's KV blocks are the prompts it computes and holds: they move with the prompt
    tokens, so the prefill model ignores them and answers from the tokens alone."""
    def prefill_wall(tokens: float) -> float:
        return 0.0165 + 1.5e-5 * tokens

    one_d = PassTimeModel(kind="prefill")
    for tokens in (1000, 2000, 3000, 4000, 6000, 8000):
        sample = Sample(tokens, tokens / 16, prefill_wall(tokens))  # KV blocks held = the prompts' blocks
        one_d.add(sample)
    assert one_d.predict(8192, 0) == pytest.approx(prefill_wall(8192))
    assert one_d.predict(8192, 0) == one_d.predict(8192, 5000)


def test_saturated_prefill_engine_is_estimated_from_its_one_point():
    """Every pass a full 8192-token chunk: one distinct point, yet the engine must be estimated (it is the
    one short of capacity). The one-input model counts reports, and through one point it is proportional."""
    m, agg = PassTimeModel(kind="prefill", min_observations=5), PassTimeModel(min_observations=5)
    for i in range(4):
        m.add(Sample(8192, 500 + 100 * i, 0.17))
        agg.add(Sample(8192, 500, 0.17))
    assert not m.ready
    m.add(Sample(8192, 900, 0.17))
    agg.add(Sample(8192, 500, 0.17))
    assert m.ready and not agg.ready
    assert m.predict(8192, 0) == pytest.approx(0.17)
    assert m.predict(4096, 0) == pytest.approx(0.085, rel=1e-3)


def test_decode_engine_regresses_on_kv_blocks_only():
    m = PassTimeModel(kind="decode")
    for kv in (10, 100, 200, 400, 800):
        m.add(Sample(0, kv, wall(0, kv)))
    assert m.ready
    assert m.predict(4096, 300) == pytest.approx(wall(0, 300))  # no prompt work in a decode pass


def test_scaler_models_follow_its_kind():
    s = LoadScaler(ttft_target_s=0.4, itl_target_s=math.inf, kind="prefill", min_observations=1)
    s.observe(report(1, 512, 10))
    assert s.models[1024].predict(0, 999) == s.models[1024].predict(0, 0)


def test_pool_ceiling_shares_the_gpu_budget_between_pools():
    gpus = {"prefill": 1, "decode": 2}
    assert pool_ceiling("prefill", max_gpu_budget=8, gpus_per_engine=gpus, current={"prefill": 3, "decode": 2}) == 4
    assert pool_ceiling("decode", max_gpu_budget=8, gpus_per_engine=gpus, current={"prefill": 3, "decode": 2}) == 2
    assert pool_ceiling("decode", max_gpu_budget=0, gpus_per_engine=gpus, current={"prefill": 3, "decode": 2}) == 0
    # agg: the one pool has the whole budget
    assert pool_ceiling("decode", max_gpu_budget=3, gpus_per_engine={"prefill": 1, "decode": 1},
                        current={"decode": 3}) == 3
    # never below one replica (0 would read as "no limit")
    assert pool_ceiling("prefill", max_gpu_budget=2, gpus_per_engine=gpus, current={"prefill": 1, "decode": 1}) == 1


def est(*pairs: tuple[float, float]) -> list[EngineEstimate]:
    return [EngineEstimate(i, t, i_) for i, (t, i_) in enumerate(pairs)]


def test_decision_hysteresis():
    s = LoadScaler(ttft_target_s=0.5, itl_target_s=0.05, sensitivity=80)
    assert s.decide(est((0.6, 0.01), (0.7, 0.01)), pending=False) is Direction.UP  # all over TTFT
    assert s.decide(est((0.1, 0.06), (0.1, 0.07)), pending=False) is Direction.UP  # all over ITL
    assert s.decide(est((0.6, 0.01), (0.1, 0.01)), pending=False) is Direction.HOLD  # not all engines
    assert s.decide(est((0.45, 0.01), (0.1, 0.01)), pending=False) is Direction.HOLD  # 0.45 > 80% of 0.5
    assert s.decide(est((0.39, 0.039), (0.1, 0.01)), pending=False) is Direction.DOWN  # all under 80%, both
    assert s.decide(est((0.39, 0.041), (0.1, 0.01)), pending=False) is Direction.HOLD  # ITL 0.041 > 0.04
    assert s.decide(est((0.9, 0.09)), pending=True) is Direction.HOLD  # a scaling is still pending
    assert s.decide([], pending=False) is Direction.HOLD


def test_scaler_end_to_end_from_reports():
    s = LoadScaler(ttft_target_s=0.05, itl_target_s=0.02, min_observations=5)
    for wid in (1, 2):
        for p in (0, 512, 1024, 2048):
            for kv in (10, 200, 400):
                s.observe(report(wid, p, kv))
    # both engines now carry 400 KV blocks: ITL 0.05 s > 0.02 → up
    for wid in (1, 2):
        s.observe(report(wid, 0, 400))
    assert s.decide(s.estimates(avg_isl=100, chunk_tokens=512), pending=False) is Direction.UP
    s.forget_missing({1})
    assert [e.worker_id for e in s.estimates(avg_isl=100, chunk_tokens=512)] == [1]


def test_clamp_step():
    assert clamp_step(3, Direction.UP, min_replicas=1, max_replicas=4) == 4
    assert clamp_step(4, Direction.UP, min_replicas=1, max_replicas=4) == 4
    assert clamp_step(1, Direction.DOWN, min_replicas=1, max_replicas=4) == 1
    assert clamp_step(2, Direction.HOLD, min_replicas=1, max_replicas=0) == 2


def test_scale_down_needs_every_engine():
    s = LoadScaler(ttft_target_s=0.5, itl_target_s=0.05)
    calm = est((0.1, 0.01), (0.1, 0.01))
    assert s.decide(calm, pending=False, engines=2) is Direction.DOWN
    assert s.decide(calm, pending=False, engines=3) is Direction.HOLD  # a third engine has no model yet
    hot = est((0.9, 0.01), (0.8, 0.01))
    assert s.decide(hot, pending=False, engines=3) is Direction.UP  # the known engines suffice to add one


def test_an_engine_without_a_model_of_its_own_can_vote_down_with_the_pools_model():
    """A newcomer that only ever sees one steady, light load never collects min_observations distinct
    points; estimated with the pool's model it lets the pool shrink, but only when it is calm too."""
    s = LoadScaler(ttft_target_s=0.5, itl_target_s=0.05, min_observations=5)
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            s.observe(report(1, p, kv))
    s.observe(report(1, 0, 10))
    for _ in range(20):  # the same point over and over: one bucket
        s.observe(report(2, 0, 10))
    own = s.estimates(avg_isl=100, chunk_tokens=512)
    assert [e.worker_id for e in own] == [1]
    borrowed = s.borrowed_estimates(avg_isl=100, chunk_tokens=512)
    assert [e.worker_id for e in borrowed] == [2]
    assert borrowed[0].itl_s == pytest.approx(wall(0, 10))
    assert s.decide(own, pending=False, engines=2) is Direction.HOLD  # the old behaviour: stuck
    assert s.decide(own, pending=False, engines=2, borrowed=borrowed) is Direction.DOWN
    # a busy newcomer (long queue) keeps the pool as it is
    s.observe(report(2, 0, 10, waiting=40))
    busy = s.borrowed_estimates(avg_isl=1000, chunk_tokens=512)
    assert s.decide(own, pending=False, engines=2, borrowed=busy) is Direction.HOLD
    # borrowed estimates never make a scale-up on their own
    assert s.decide([], pending=False, engines=2, borrowed=busy) is Direction.HOLD


def test_no_borrowing_without_a_ready_model():
    s = LoadScaler(ttft_target_s=0.5, itl_target_s=0.05, min_observations=5)
    s.observe(report(1, 0, 10))
    assert s.borrowed_estimates(avg_isl=100, chunk_tokens=512) == []


def test_latency_correction():
    c = LatencyCorrection(cap=20)
    engines = est((0.1, 0.01), (0.3, 0.03))  # means 0.2 s, 0.02 s
    c.update(0.6, 0.05, engines)
    assert (c.ttft, c.itl) == (pytest.approx(3.0), pytest.approx(2.5))
    c.update(0.1, 0.01, engines)  # clients see less than the engines predict: no credit below 1
    assert (c.ttft, c.itl) == (1.0, 1.0)
    c.update(100.0, 1.0, engines)
    assert c.ttft == 20 and c.itl == 20  # capped
    c.update(float("nan"), float("nan"), engines)  # an idle step: halfway back to 1
    assert (c.ttft, c.itl) == (10.5, 10.5)
    assert engines[0].scaled(2.0, 3.0) == EngineEstimate(0, 0.2, pytest.approx(0.03))


def test_up_step_is_sized_by_how_far_over_target():
    hot = est((1.6, 0.01), (1.1, 0.01))  # TTFT target 0.5: the least loaded engine is 2.2x over
    kw = {"ttft_target_s": 0.5, "itl_target_s": 0.05}
    assert up_step(hot, 2, max_step=1, **kw) == 1  # the reference's ±1
    assert up_step(hot, 2, max_step=8, **kw) == 3  # ceil(2 × 2.2) − 2
    assert up_step(hot, 2, max_step=2, **kw) == 2  # capped
    assert up_step(est((0.51, 0.01)), 1, max_step=8, **kw) == 1  # barely over: at least one
    # ITL over on every engine, TTFT not: ITL's ratio (0.15 / 0.05 = 3) sizes the step
    assert up_step(est((0.1, 0.15), (0.9, 0.2)), 1, max_step=8, **kw) == 2
    # a dimension the pool does not answer for (prefill pools: ITL target inf) is ignored
    assert up_step(hot, 2, max_step=8, ttft_target_s=0.5, itl_target_s=math.inf) == 3


def test_clamp_step_by_more_than_one():
    assert clamp_step(1, Direction.UP, min_replicas=1, max_replicas=4, step=2) == 3
    assert clamp_step(3, Direction.UP, min_replicas=1, max_replicas=4, step=3) == 4
    assert clamp_step(3, Direction.HOLD, min_replicas=1, max_replicas=4, step=3) == 3


def test_scale_down_window():
    assert ScaleDownWindow(0).allow(0.0, Direction.DOWN) is Direction.DOWN  # off: as voted
    w = ScaleDownWindow(10)
    assert w.allow(0.0, Direction.DOWN) is Direction.DOWN  # nothing busy seen yet
    assert w.allow(1.0, Direction.HOLD) is Direction.HOLD  # busy
    assert w.allow(2.0, Direction.DOWN) is Direction.HOLD  # calm for 1 s only
    assert w.allow(10.9, Direction.DOWN) is Direction.HOLD
    assert w.allow(11.0, Direction.DOWN) is Direction.DOWN  # calm for the whole window
    assert w.allow(12.0, Direction.DOWN) is Direction.DOWN  # and it stays calm: the next step follows at once
    assert w.allow(13.0, Direction.UP) is Direction.UP  # scale-up is never delayed ...
    assert w.allow(14.0, Direction.DOWN) is Direction.HOLD  # ... and restarts the wait


def test_itl_estimate_includes_the_prompt_work_sharing_the_pass():
    m = PassTimeModel()
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            m.add(sample_from_report(report(1, p, kv)))
    # an agg engine in a burst: 1024 prompt tokens per pass slow each decode step by 1024 × 1e-5 s
    _, itl = estimate(m, report(1, 1024, 100), avg_isl=1000, chunk_tokens=512)
    assert itl == pytest.approx(wall(1024, 100))
    _, idle_itl = estimate(m, report(1, 0, 100), avg_isl=1000, chunk_tokens=512)
    assert idle_itl == pytest.approx(wall(0, 100))


def test_reports_from_engines_that_left_are_dropped():
    s = LoadScaler(ttft_target_s=0.05, itl_target_s=0.02, min_observations=5)
    for p in (0, 512, 1024, 2048):
        for kv in (10, 200, 400):
            s.observe(report(1, p, kv), {1, 2})
            s.observe(report(2, p, kv), {1, 2})
    s.forget_missing({1})
    # engine 2 drains after leaving discovery and still publishes: an idle report that must not vote
    s.observe(report(2, 0, 10), {1})
    s.observe(report(1, 0, 400), {1})
    ests = s.estimates(avg_isl=100, chunk_tokens=512)
    assert [e.worker_id for e in ests] == [1]
    assert s.decide(ests, pending=False) is Direction.UP
