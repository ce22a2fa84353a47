"""Load predictors: the next interval's request count, ISL and OSL from the ones observed so far (§7.1).

Pure: no clock, no I/O. Every predictor ignores NaN observations and the leading run of zeros (an idle
deployment before its first request says nothing about the load to come).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from dynamo.runtime.errors import ConfigError

PREDICTORS = ("constant", "arima", "kalman", "prophet")


class LoadPredictor(ABC):
    """Feed one observation per interval with :meth:`add`; :meth:`predict` forecasts the next one."""

    def __init__(self) -> None:
        self.history: list[float] = []

    def add(self, value: float | None) -> None:
        if value is None or math.isnan(value):
            return
        if not self.history and value == 0:
            return
        self.history.append(float(value))
        self._observe(float(value))

    def _observe(self, value: float) -> None:  # noqa: B027 - optional hook for stateful predictors
        pass

    def last(self) -> float:
        return self.history[-1] if self.history else 0.0

    @abstractmethod
    def predict(self) -> float:
        """Forecast for the next interval, never negative; 0 before any observation."""


class ConstantPredictor(LoadPredictor):
    """Next = last observed."""

    def predict(self) -> float:
        return self.last()


class KalmanPredictor(LoadPredictor):
    """Local linear trend Kalman filter: state (level, trend), F=[[1,1],[0,1]], H=[1,0].

    Until ``min_points`` observations arrive the filter's estimate is too loose to trust, so the last
    value is returned instead.
    """

    def __init__(self, q_level: float = 1.0, q_trend: float = 0.1, r: float = 10.0, min_points: int = 5) -> None:
        super().__init__()
        self.q_level, self.q_trend, self.r, self.min_points = q_level, q_trend, r, min_points
        self.level = 0.0
        self.trend = 0.0
        # Covariance P as its three distinct entries (it stays symmetric).
        self.p00 = self.p11 = 1000.0
        self.p01 = 0.0
        self._started = False

    def _observe(self, z: float) -> None:
        if not self._started:
            self.level, self._started = z, True
            return
        # Predict: x = F x; P = F P F^T + Q.
        level = self.level + self.trend
        trend = self.trend
        p00 = self.p00 + 2 * self.p01 + self.p11 + self.q_level
        p01 = self.p01 + self.p11
        p11 = self.p11 + self.q_trend
        # Update with z: K = P H^T / (H P H^T + R).
        s = p00 + self.r
        k0, k1 = p00 / s, p01 / s
        innovation = z - level
        self.level = level + k0 * innovation
        self.trend = trend + k1 * innovation
        self.p00 = (1 - k0) * p00
        self.p01 = (1 - k0) * p01
        self.p11 = p11 - k1 * p01

    def predict(self) -> float:
        if len(self.history) < self.min_points:
            return self.last()
        return max(0.0, self.level + self.trend)


class ArimaPredictor(LoadPredictor):
    """pmdarima's ``auto_arima`` refitted on the whole history; needs at least 5 points.

    A series whose model collapses to (0, d, 0) (a random walk: the forecast is the last value) is
    refitted on ``log1p`` of the data, which often exposes structure a bursty series hides.
    """

    MIN_POINTS = 5

    def __init__(self) -> None:
        super().__init__()
        self._pm = require_pmdarima()

    def predict(self) -> float:
        if len(self.history) < self.MIN_POINTS:
            return self.last()
        import numpy as np

        data = np.asarray(self.history, dtype=float)
        try:
            model = self._pm.auto_arima(data, suppress_warnings=True, error_action="ignore")
            if next(iter(model.order)) == 0 and tuple(model.order)[2] == 0:
                logged = self._pm.auto_arima(np.log1p(data), suppress_warnings=True, error_action="ignore")
                return max(0.0, float(np.expm1(logged.predict(n_periods=1)[0])))
            return max(0.0, float(model.predict(n_periods=1)[0]))
        except Exception:  # a degenerate series (constant, too short after differencing)
            return self.last()


class ProphetPredictor(LoadPredictor):
    """Prophet over the last ``window`` points (one point per interval, a synthetic time axis)."""

    def __init__(self, window: int = 50) -> None:
        super().__init__()
        self.window = window
        try:
            import prophet
        except ImportError as exc:
            raise ConfigError("--load-predictor prophet needs the 'prophet' package (pip install prophet); "
                              "or use --load-predictor constant|kalman|arima") from exc
        self._prophet: Any = prophet

    def predict(self) -> float:
        if len(self.history) < 2:
            return self.last()
        import pandas as pd

        data = self.history[-self.window:]
        frame = pd.DataFrame({"ds": pd.date_range("2000-01-01", periods=len(data), freq="min"), "y": data})
        model = self._prophet.Prophet()
        model.fit(frame)
        future = model.make_future_dataframe(periods=1, freq="min")
        return max(0.0, float(model.predict(future)["yhat"].iloc[-1]))


def require_pmdarima() -> Any:
    try:
        import pmdarima
    except ImportError as exc:
        raise ConfigError("--load-predictor arima needs pmdarima (pip install 'dynamo-py[planner]'); "
                          "or use --load-predictor constant|kalman") from exc
    return pmdarima


def make_predictor(name: str, *, kalman_q_level: float = 1.0, kalman_q_trend: float = 0.1,
                   kalman_r: float = 10.0, kalman_min_points: int = 5, prophet_window: int = 50) -> LoadPredictor:
    """A fresh predictor by its ``--load-predictor`` name; unknown names and missing libraries raise
    :class:`ConfigError`."""
    if name == "constant":
        return ConstantPredictor()
    if name == "kalman":
        return KalmanPredictor(kalman_q_level, kalman_q_trend, kalman_r, kalman_min_points)
    if name == "arima":
        return ArimaPredictor()
    if name == "prophet":
        return ProphetPredictor(prophet_window)
    raise ConfigError(f"unknown load predictor {name!r}; choose one of {', '.join(PREDICTORS)}")
