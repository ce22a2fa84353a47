"""Load predictors on synthetic series (constant, ramp, step, noise) and hand-computed Kalman steps."""

from __future__ import annotations

import math
import random

import pytest

from dynamo.planner.predictors import ConstantPredictor, KalmanPredictor, make_predictor
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit


def feed(p, values):
    for v in values:
        p.add(v)
    return p


def test_constant_skips_leading_zeros_and_nan():
    p = feed(ConstantPredictor(), [0, 0, 5, math.nan, None, 7])
    assert p.history == [5, 7]
    assert p.predict() == 7
    assert ConstantPredictor().predict() == 0.0


def test_zero_after_first_load_is_kept():
    p = feed(ConstantPredictor(), [0, 3, 0])
    assert p.history == [3, 0]
    assert p.predict() == 0


def test_kalman_one_step_by_hand():
    # level 10 from the first point; then predict P = F P0 F^T + Q = [[2001, 1000], [1000, 1000.1]],
    # gain K = P H^T / (P00 + R) = [2001, 1000] / 2011, innovation 12 - 10 = 2.
    p = feed(KalmanPredictor(min_points=2), [10, 12])
    level = 10 + 2 * 2001 / 2011
    trend = 2 * 1000 / 2011
    assert p.level == pytest.approx(level)
    assert p.trend == pytest.approx(trend)
    assert p.predict() == pytest.approx(level + trend)


def test_kalman_uses_last_value_until_min_points():
    p = feed(KalmanPredictor(min_points=5), [10, 40, 20, 30])
    assert p.predict() == 30


def test_kalman_constant_series():
    p = feed(KalmanPredictor(), [25.0] * 20)
    assert p.predict() == pytest.approx(25.0, abs=0.01)


def test_kalman_follows_a_ramp():
    p = feed(KalmanPredictor(), [float(i) for i in range(1, 31)])
    assert p.predict() == pytest.approx(31.0, abs=0.5)


def test_kalman_catches_up_with_a_step():
    p = feed(KalmanPredictor(), [5.0] * 10 + [50.0])
    assert 25 < p.predict() < 50  # moves most of the way at once
    feed(p, [50.0] * 4)
    assert p.predict() > 50  # the trend term overshoots for a while...
    feed(p, [50.0] * 15)
    assert p.predict() == pytest.approx(50.0, abs=1.0)  # ...then settles


def test_kalman_smooths_noise():
    rng = random.Random(7)
    values = [100 + rng.gauss(0, 10) for _ in range(60)]
    p = feed(KalmanPredictor(), values)
    assert abs(p.predict() - 100) < 15
    # smoother than the raw series: its forecast is closer to the mean than the last point is, on average
    errs_kalman, errs_last = [], []
    k = KalmanPredictor()
    for i, v in enumerate(values):
        if i >= 10:
            errs_kalman.append(abs(k.predict() - v))
            errs_last.append(abs(values[i - 1] - v))
        k.add(v)
    assert sum(errs_kalman) < sum(errs_last)


def test_kalman_never_negative():
    p = feed(KalmanPredictor(), [50, 40, 30, 20, 10, 1, 0.5])
    assert p.predict() >= 0


def test_unknown_predictor_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown load predictor"):
        make_predictor("oracle")


def test_arima_follows_a_ramp_or_says_what_is_missing():
    try:
        import pmdarima  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pmdarima"):
            make_predictor("arima")
        return
    p = feed(make_predictor("arima"), [float(10 * i) for i in range(1, 21)])
    assert p.predict() == pytest.approx(210.0, rel=0.05)
    short = feed(make_predictor("arima"), [3.0, 4.0])
    assert short.predict() == 4.0
