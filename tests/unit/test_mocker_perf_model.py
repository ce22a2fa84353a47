"""Mocker timing models (reference §3.3): polynomial formulas, NPZ/profiler interpolation, speedups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.perf_model import (
    Interp1D,
    Interp2D,
    InterpolatedPerfModel,
    PolynomialPerfModel,
    kv_transfer_delay_ms,
    load_perf_model,
    scaled_pass_ms,
)
from dynamo.mocker.scheduler import Scheduler
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit

PROFILING = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dynamo" / "profiling"
PROFILE_DIR = PROFILING / "H200_TP1P_TP1D_llama3.1-8b-fp8"
PRE_SWEPT_70B = PROFILING / "pre_swept_results" / "h100_sxm" / "vllm" / "nvidia" / "Llama-3.3-70B-Instruct-FP8"


def test_polynomial_prefill_formula() -> None:
    m = PolynomialPerfModel()
    t = 4096
    assert m.predict_prefill_ms(1, t, 0) == pytest.approx(4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142)
    # T = batch_count × (mean_isl − mean_prefix)
    assert m.predict_prefill_ms(4, 1500, 500) == pytest.approx(m.predict_prefill_ms(1, 4000, 0))
    assert m.predict_prefill_ms(0, 100, 0) == 0.0
    assert m.predict_prefill_ms(2, 100, 100) == 0.0


def test_polynomial_decode_formula_and_floor() -> None:
    m = PolynomialPerfModel()
    for u in (0.0, 0.25, 0.5, 1.0):
        total = 1_000_000
        assert m.predict_decode_ms(8, int(u * total), 100, total) == pytest.approx(
            max(1.0, -25.74 * u * u + 54.01 * u + 5.74), rel=1e-6
        )
    assert m.predict_decode_ms(0, 10, 10, 100) == 0.0
    # the fit would go below 1 ms far past full utilisation; clamped
    assert m.predict_decode_ms(1, 300, 1, 100) == 1.0


def test_interp1d_interpolates_and_extrapolates() -> None:
    f = Interp1D([0, 10, 20], [0, 100, 120])
    assert f(5) == pytest.approx(50)
    assert f(15) == pytest.approx(110)
    assert f(30) == pytest.approx(140)  # extrapolates the last segment
    assert f(-10) == pytest.approx(-100)
    with pytest.raises(ConfigError):
        Interp1D([1, 1], [2, 3])


def test_interp2d_bilinear_with_extrapolation() -> None:
    # z = 2x + 3y is reproduced exactly by bilinear interpolation, including outside the grid
    xs, ys = [0.0, 10.0, 20.0], [0.0, 5.0]
    g = Interp2D(xs, ys, [[2 * x + 3 * y for y in ys] for x in xs])
    for x, y in [(3, 1), (15, 4), (25, 7), (-5, -1)]:
        assert g(x, y) == pytest.approx(2 * x + 3 * y)
    with pytest.raises(ConfigError):
        Interp2D(xs, ys, [[1, 2]])


def test_mocker_format_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "perf.npz"
    kv = np.array([0.0, 1000.0, 2000.0])
    ctx = np.array([100.0, 1000.0])
    itl = np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    np.savez(path, prefill_isl=[100, 1000], prefill_ttft_ms=[10.0, 40.0], decode_active_kv_tokens=kv,
             decode_context_length=ctx, decode_itl=itl)
    m = load_perf_model(path)
    assert isinstance(m, InterpolatedPerfModel)
    assert m.predict_prefill_ms(1, 550, 0) == pytest.approx(25.0)
    assert m.predict_prefill_ms(2, 300, 25) == pytest.approx(25.0)  # T = 2 × 275
    assert m.predict_decode_ms(4, 1500, 550, 10**6) == pytest.approx(8.5)  # mean of 7, 9, 8, 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, prefill_isl=[1, 2])
    with pytest.raises(ConfigError, match="missing keys"):
        load_perf_model(bad)


def test_profiler_results_directory_matches_measured_points() -> None:
    m = InterpolatedPerfModel.from_profile_dir(PROFILE_DIR)
    with np.load(PROFILE_DIR / "selected_prefill_interpolation" / "raw_data.npz") as pre:
        for isl, ttft in zip(pre["prefill_isl"], pre["prefill_ttft"], strict=True):
            assert m.predict_prefill_ms(1, int(isl), 0) == pytest.approx(float(ttft), rel=1e-6)
    with np.load(PROFILE_DIR / "selected_decode_interpolation" / "raw_data.npz") as dec:
        max_kv = float(dec["max_kv_tokens"][0])
        xs, ys, zs = dec["x_kv_usage"], dec["y_context_length"], dec["z_itl"]
        # the grid is piecewise linear between the 100 resampled KV points; stay within a few percent
        for x, y, z in zip(xs, ys, zs, strict=True):
            got = m.predict_decode_ms(1, int(x * max_kv), int(y), 0)
            assert got == pytest.approx(max(1.0, float(z)), rel=0.05)


def test_pre_swept_directory_picks_a_row() -> None:
    tp8 = InterpolatedPerfModel.from_profile_dir(PRE_SWEPT_70B, row=0)
    tp2 = InterpolatedPerfModel.from_profile_dir(PRE_SWEPT_70B, row=2)
    with np.load(PRE_SWEPT_70B / "prefill.npz") as pre:
        isl = int(pre["prefill_isl"][2][3])
        assert tp2.predict_prefill_ms(1, isl, 0) == pytest.approx(float(pre["prefill_ttft"][2][3]))
    assert tp8.predict_prefill_ms(1, 4000, 0) != tp2.predict_prefill_ms(1, 4000, 0)
    with pytest.raises(ConfigError, match="row 7"):
        InterpolatedPerfModel.from_profile_dir(PRE_SWEPT_70B, row=7)


def test_load_perf_model_selection(tmp_path: Path) -> None:
    assert isinstance(load_perf_model(None), PolynomialPerfModel)
    assert isinstance(load_perf_model(PROFILE_DIR), InterpolatedPerfModel)
    with pytest.raises(ConfigError):
        load_perf_model(tmp_path / "nope")
    with pytest.raises(ConfigError, match="expected"):
        load_perf_model(tmp_path)  # a directory without profiling data


def test_scheduler_uses_profile_data_from_args() -> None:
    s = Scheduler(MockEngineArgs(planner_profile_data=str(PROFILE_DIR), seed=0))
    s.add_request("a", list(range(4168)), 1)
    r = s.step()
    assert r.prefill_ms == pytest.approx(87.342026, rel=1e-6)


def test_speedup_and_transfer_helpers() -> None:
    assert scaled_pass_ms(100.0, 20.0, 10.0, 2.0) == pytest.approx(10.0 + 1.0)
    assert scaled_pass_ms(100.0, 20.0, 1.0, 1.0) == pytest.approx(120.0)
    # 1,000 tokens × 131,072 B at 64 GB/s
    assert kv_transfer_delay_ms(1000, 131072, 64.0) == pytest.approx(1000 * 131072 / 64e9 * 1e3)
    assert kv_transfer_delay_ms(1000, 131072, 0.0) is None
    assert kv_transfer_delay_ms(1000, None, 64.0) is None
