"""Profile interpolation against the NPZ points, and the throughput planner's replica math (by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynamo.planner.perf_interpolation import load_profile
from dynamo.planner.throughput import (
    EngineShape,
    IntervalStats,
    SlaTargets,
    apply_gpu_budget,
    compute_replicas,
    decode_correction,
    prefill_correction,
)
from dynamo.runtime.errors import ConfigError
from tests.support.procs import SHARED_DATA

pytestmark = pytest.mark.unit

PROFILING = SHARED_DATA / "dynamo" / "profiling"
H200 = PROFILING / "H200_TP1P_TP1D_llama3.1-8b-fp8"
H100_70B = PROFILING / "pre_swept_results" / "h100_sxm" / "vllm" / "nvidia" / "Llama-3.3-70B-Instruct-FP8"


@pytest.fixture(scope="module")
def perf():
    return load_profile(H200)


@pytest.fixture(scope="module")
def raw():
    p = np.load(H200 / "selected_prefill_interpolation" / "raw_data.npz")
    d = np.load(H200 / "selected_decode_interpolation" / "raw_data.npz")
    return p, d


def test_prefill_exact_at_profiled_points(perf, raw):
    p, _ = raw
    for isl, ttft, thpt in zip(p["prefill_isl"], p["prefill_ttft"], p["prefill_thpt_per_gpu"], strict=True):
        assert perf.prefill.ttft_s(isl) == pytest.approx(ttft / 1000)
        assert perf.prefill.throughput_per_gpu(isl) == pytest.approx(thpt)


def test_prefill_linear_between_and_clamped_outside(perf):
    assert perf.prefill.ttft_s(608.5) == pytest.approx((19.525209 + 38.494131) / 2 / 1000)
    assert perf.prefill.ttft_s(10) == pytest.approx(19.525209 / 1000)
    assert perf.prefill.ttft_s(100_000) == perf.prefill.ttft_s(16372)


def test_decode_exact_at_profiled_points(perf, raw):
    _, d = raw
    for x, y, itl, thpt in zip(d["x_kv_usage"], d["y_context_length"], d["z_itl"], d["z_thpt_per_gpu"], strict=True):
        assert perf.decode.itl_s(x, y) == pytest.approx(itl / 1000)
        assert perf.decode.throughput_per_gpu_at(x, y) == pytest.approx(thpt)
    assert perf.decode.max_kv_tokens == 945029


def test_decode_between_context_rows(perf):
    # Halfway between the 350 and 2997 rows, at KV usage 0.1 (inside both rows' sweeps).
    lo = np.interp(0.1, [0.0974044183, 0.194438478], [19.11118176, 31.07218247])
    hi = perf.decode.itl_s(0.1, 2997) * 1000
    assert perf.decode.itl_s(0.1, (350 + 2997) / 2) * 1000 == pytest.approx((lo + hi) / 2)


def test_best_decode_throughput(perf, raw):
    _, d = raw
    row = d["y_context_length"] == 350
    # Every profiled ITL at context 350 meets 50 ms: the highest KV usage wins.
    assert perf.decode.best_throughput_per_gpu(0.050, 350) == pytest.approx(d["z_thpt_per_gpu"][row][-1])
    # 20 ms is crossed between usage 0.0974 (19.1 ms) and 0.194 (31.1 ms), ~0.1046.
    t = perf.decode.best_throughput_per_gpu(0.020, 350)
    assert 13423.7 <= t <= 13423.75 + (0.1046 - 0.0974) / 0.0970 * (16514.88 - 13423.75)
    # No point meets 1 ms: the lowest one's throughput.
    assert perf.decode.best_throughput_per_gpu(0.001, 350) == pytest.approx(d["z_thpt_per_gpu"][row][0])


def test_pre_swept_rows_by_tensor_parallel():
    tp4 = load_profile(H100_70B, prefill_tp=4, decode_tp=4)
    data = np.load(H100_70B / "prefill.npz")
    row = list(data["tp"].ravel()).index(4)
    assert tp4.prefill.ttft_s(data["prefill_isl"][row][3]) == pytest.approx(data["prefill_ttft"][row][3] / 1000)


def test_missing_profile_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--profile-results-dir"):
        load_profile(tmp_path)


INTERVAL = 60.0
SHAPE = EngineShape(max_gpu_budget=64)


def replicas(perf, mode, next_req, isl=2134, osl=150, p_corr=None, d_corr=None, shape=SHAPE, itl=0.050):
    return compute_replicas(mode, next_req=next_req, next_isl=isl, next_osl=osl, interval_s=INTERVAL,
                            targets=SlaTargets(0.5, itl), perf=perf, shape=shape, p_corr=p_corr, d_corr=d_corr)


def test_prefill_replicas_by_hand(perf):
    thpt = 42706.95834038  # tokens/s/GPU at ISL 2134
    # 6000 requests × 2134 tokens / 60 s = 213,400 tokens/s → 4.997 GPUs → 5 engines.
    assert 6000 * 2134 / 60 / thpt == pytest.approx(4.9969, abs=1e-3)
    assert replicas(perf, "prefill", 6000).prefill == 5
    assert replicas(perf, "prefill", 6000, p_corr=0.5).prefill == 3  # 2.498 → 3
    assert replicas(perf, "prefill", 6000, p_corr=2.0).prefill == 5  # corrections above 1 are not applied
    two_gpu = EngineShape(prefill_engine_num_gpu=2, max_gpu_budget=64)
    assert replicas(perf, "prefill", 6000, shape=two_gpu).prefill == 3  # 4.997 GPUs / 2 per engine
    assert replicas(perf, "prefill", 10).prefill == 1  # min_endpoint
    assert replicas(perf, "prefill", 0).prefill == 1


def test_decode_replicas_by_hand(perf, raw):
    _, d = raw
    thpt = d["z_thpt_per_gpu"][d["y_context_length"] == 350][-1]  # ITL 50 ms met up to the top of the row
    # context = isl + osl/2 = 275 + 75 = 350; 20000 requests × 150 tokens / 60 s = 50,000 tokens/s
    expected = math.ceil(20000 * 150 / 60 / thpt)
    assert replicas(perf, "decode", 20000, isl=275).decode == expected == 3
    # d_corr 2: the engines run twice as slow as profiled, so aim for 25 ms in the profile
    tighter = replicas(perf, "decode", 20000, isl=275, d_corr=2.0).decode
    assert tighter > expected


def test_agg_sums_both_phases(perf):
    p = replicas(perf, "disagg", 6000)
    a = replicas(perf, "agg", 6000)
    assert a.prefill is None
    assert max(p.prefill, p.decode) <= a.decode <= p.prefill + p.decode


def test_gpu_budget_edges():
    one = EngineShape(max_gpu_budget=8)
    assert apply_gpu_budget(3, 5, one) == (3, 5)  # exactly at budget: unchanged
    assert apply_gpu_budget(5, 7, one) == (3, 5)  # 12 → 8: prefill round(5×2/3)=3, decode the rest
    assert apply_gpu_budget(1, 20, one) == (1, 7)  # min_endpoint keeps one prefill engine
    two = EngineShape(prefill_engine_num_gpu=2, decode_engine_num_gpu=2, max_gpu_budget=8)
    assert apply_gpu_budget(2, 3, two) == (2, 2)  # 10 GPUs → prefill round(1.6)=2 (4 GPUs), decode 4/2
    assert apply_gpu_budget(50, 50, EngineShape(max_gpu_budget=0)) == (50, 50)  # 0: no limit


def test_disagg_respects_budget(perf):
    d = replicas(perf, "disagg", 60000, shape=EngineShape(max_gpu_budget=8))
    assert d.prefill + d.decode == 8


def test_corrections_by_hand(perf):
    stats = IntervalStats(num_requests=600, isl=275, osl=150, ttft_s=0.1, itl_s=0.010, request_duration_s=6.0)
    expected_ttft = np.interp(275, [100, 1117], [19.525209, 38.494131]) / 1000
    assert prefill_correction(stats, perf) == pytest.approx(0.1 / expected_ttft)
    # concurrency per engine = 600/2 × 6 s / 60 s = 30; KV usage = 30 × 350 / 945029
    usage = 30 * 350 / 945029
    expected_itl = np.interp(usage, [0.000370359005, 0.0974044183], [4.379871, 19.11118176]) / 1000
    assert decode_correction(stats, perf, num_decode=2, interval_s=60) == pytest.approx(0.010 / expected_itl)
    idle = IntervalStats(num_requests=0, isl=275, osl=150, ttft_s=math.nan, itl_s=math.nan, request_duration_s=0)
    assert prefill_correction(idle, perf) is None
    assert decode_correction(idle, perf, num_decode=2, interval_s=60) is None
