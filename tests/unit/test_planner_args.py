"""Planner flags: reference defaults, the ``--no-...`` switches, environment fallbacks, bad combinations."""

from __future__ import annotations

import pytest

from dynamo.planner.args import parse_config
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit


def test_reference_defaults():
    c = parse_config([])
    assert (c.environment, c.backend, c.mode, c.adjustment_interval) == ("kubernetes", "vllm", "disagg", 180.0)
    assert (c.ttft, c.itl, c.isl, c.osl) == (500.0, 50.0, 3000.0, 150.0)
    assert (c.load_predictor, c.max_gpu_budget, c.min_endpoint) == ("arima", 8, 1)
    assert (c.prefill_engine_num_gpu, c.decode_engine_num_gpu) == (1, 1)
    assert (c.enable_loadbased_scaling, c.loadbased_adjustment_interval, c.loadbased_sensitivity) == (False, 5.0, 80.0)
    assert (c.max_num_fpm_samples, c.fpm_sample_bucket_size, c.load_min_observations) == (64, 16, 5)
    assert c.no_operation is False and c.no_correction is False
    assert c.scaling_max_wait_time == 1800.0
    # ours, off by default: one replica per load-based decision, scale-down at once (the reference's behaviour)
    assert (c.loadbased_max_step_up, c.loadbased_scale_down_window) == (1, 0.0)


def test_no_switches_turn_things_on(monkeypatch):
    assert parse_config(["--no-operation"]).no_operation is True
    assert parse_config(["--no-correction"]).no_correction is True
    monkeypatch.setenv("DYN_PLANNER_NO_OPERATION", "true")
    monkeypatch.setenv("PROMETHEUS_ENDPOINT", "http://prom:9090")
    c = parse_config([])
    assert c.no_operation is True and c.prometheus_endpoint == "http://prom:9090"


@pytest.mark.parametrize(("argv", "message"), [
    (["--ttft", "0"], "--ttft must be > 0"),
    (["--environment", "global-planner"], "not available yet"),
    (["--no-enable-throughput-scaling"], "nothing to do"),
    ([], "--profile-results-dir"),
    (["--profile-results-dir", "x", "--environment", "local", "--mode", "agg"], "--local-worker-cmd"),
    (["--profile-results-dir", "x", "--environment", "local", "--local-worker-cmd", "w"],
     "--local-prefill-worker-cmd"),
    (["--profile-results-dir", "x", "--max-gpu-budget", "1"], "below the 2 GPUs"),
    (["--profile-results-dir", "x", "--loadbased-sensitivity", "120"], "sensitivity"),
    (["--profile-results-dir", "x", "--loadbased-max-step-up", "0"], "--loadbased-max-step-up must be >= 1"),
    (["--profile-results-dir", "x", "--loadbased-scale-down-window", "-1"],
     "--loadbased-scale-down-window must be >= 0"),
    (["--profile-results-dir", "x", "--environment", "local", "--mode", "agg", "--local-worker-cmd", "a 'b"],
     "--local-worker-cmd"),
])
def test_bad_combinations(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv).validate()


def test_scaling_pace_flags_and_env(monkeypatch):
    c = parse_config(["--loadbased-max-step-up", "3", "--loadbased-scale-down-window", "30"])
    assert (c.loadbased_max_step_up, c.loadbased_scale_down_window) == (3, 30.0)
    monkeypatch.setenv("DYN_PLANNER_LOADBASED_SCALE_DOWN_WINDOW", "12.5")
    monkeypatch.setenv("DYN_PLANNER_LOADBASED_MAX_STEP_UP", "2")
    c = parse_config([])
    assert (c.loadbased_max_step_up, c.loadbased_scale_down_window) == (2, 12.5)


def test_pools_by_mode():
    assert parse_config(["--mode", "agg"]).pools() == ("decode",)
    assert parse_config(["--mode", "disagg"]).pools() == ("prefill", "decode")
    assert parse_config(["--mode", "prefill"]).pools() == ("prefill",)
