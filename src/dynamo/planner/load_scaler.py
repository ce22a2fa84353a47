"""Load-based scaling (reference §7.2): regressions of engine pass time over forward-pass metrics, an
estimate of every engine's TTFT and ITL now, and a ±1 step when all engines agree.

Pure: reports arrive as dicts (the ``forward-pass-metrics`` payload of ``llm/forward_pass.py``), time
is not read. A report counts ``passes`` engine iterations, and its ``window_s`` runs from the end of the
first of them to the end of the last (a window opens when a pass is accounted, which is when it ends),
so it spans ``passes - 1`` whole passes: the wall time of one pass is ``window_s / (passes - 1)``
(dividing by ``passes`` halved the pass time of an engine whose passes outlast the 100 ms window, a
saturated prefill engine's). Its inputs are the prompt tokens computed per pass
(``scheduled_tokens - emitted_tokens``: every other scheduled token is a decode step) and the KV blocks
in use. One linear model per engine, ``wall = a + b·prefill_tokens + c·kv_blocks`` in an agg engine;
as the reference, a prefill engine's model sees only the prompt tokens and a decode engine's only the KV
blocks (:data:`REGRESSORS`). ITL is the pass time at today's KV load and today's prompt work per pass (a decode step shares its pass
with the prompt chunks scheduled beside it: in an agg engine a burst of prompts slows every running
stream, and that is the first sign of a burst; a disaggregated decode engine computes no prompts, so
there it is the pass time at today's KV load), TTFT the time to push the waiting prompts plus one more
through in ``max_num_batched_tokens`` chunks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

#: What each kind of engine's pass-time model regresses on (prompt tokens per pass, KV blocks in use).
#: A prefill engine's KV blocks are the very prompts it is computing (held until handed to decode), so
#: they move with the prompt tokens: with both inputs the fit splits the pass time between two collinear
#: columns at random and extrapolates a full chunk at today's (idle) KV to nothing. A decode engine
#: computes no prompts. Only an agg engine has two independent loads.
REGRESSORS = {"agg": (True, True), "prefill": (True, False), "decode": (False, True)}


class Direction(int, Enum):
    DOWN = -1
    HOLD = 0
    UP = 1


@dataclass(frozen=True)
class Sample:
    prefill_tokens: float
    kv_blocks: float
    wall_s: float


def sample_from_report(report: dict[str, Any]) -> Sample | None:
    """One regression point from a forward-pass report; None for a window that timed no whole pass (one
    pass alone, the usual report of an engine that went idle after it)."""
    passes = int(report.get("passes") or 0)
    window = float(report.get("window_s") or 0.0)
    if passes < 2 or window <= 0:
        return None
    prompt = max(0, int(report.get("scheduled_tokens", 0)) - int(report.get("emitted_tokens", 0)))
    return Sample(prompt / passes, float(report.get("kv_used_blocks", 0)), window / (passes - 1))


class PassTimeModel:
    """Sliding-window least squares of pass wall time on (prompt tokens, KV blocks).

    Samples are keyed by a coarse bucket of their inputs (``bucket`` tokens/blocks wide) and a new
    sample replaces the one in its bucket: a steady load produces the same point over and over, and
    without this it would crowd out the spread the fit needs. At most ``max_samples`` buckets are kept,
    the oldest dropped first.
    """

    def __init__(self, max_samples: int = 64, bucket: int = 16, min_observations: int = 5,
                 kind: str = "agg") -> None:
        """``kind``: ``agg``, ``prefill`` or ``decode`` (:data:`REGRESSORS`); an input the kind does not
        regress on is read as 0, in the samples, their buckets and predictions alike."""
        self.max_samples, self.bucket, self.min_observations = max_samples, max(1, bucket), min_observations
        self._use_tokens, self._use_kv = REGRESSORS[kind]
        self._seen = 0  # reports taken, repeats included
        self._samples: OrderedDict[tuple[int, int], Sample] = OrderedDict()
        self._coef: np.ndarray | None = None

    def _inputs(self, prefill_tokens: float, kv_blocks: float) -> tuple[float, float]:
        return (prefill_tokens if self._use_tokens else 0.0, kv_blocks if self._use_kv else 0.0)

    def add(self, s: Sample) -> None:
        s = Sample(*self._inputs(s.prefill_tokens, s.kv_blocks), s.wall_s)
        key = (int(s.prefill_tokens // self.bucket), int(s.kv_blocks // self.bucket))
        self._samples.pop(key, None)
        self._samples[key] = s
        while len(self._samples) > self.max_samples:
            self._samples.popitem(last=False)
        self._seen += 1
        self._coef = None

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def ready(self) -> bool:
        """Enough to estimate from: ``min_observations`` distinct points for the agg model's plane; for
        the one-input models that many reports, distinct or not. A saturated prefill engine computes a
        full chunk every pass, one point over and over, and it is exactly the engine that must be
        estimated; the minimum-norm fit through one point is pass time proportional to the input, which
        is how a prefill pass grows with its tokens."""
        if self._use_tokens and self._use_kv:
            return len(self._samples) >= self.min_observations
        return self._seen >= self.min_observations and len(self._samples) > 0

    def _fit(self) -> np.ndarray:
        if self._coef is None:
            rows = list(self._samples.values())
            x = np.array([[1.0, s.prefill_tokens, s.kv_blocks] for s in rows])
            y = np.array([s.wall_s for s in rows])
            # Minimum-norm solution: an input that never varied gets no weight instead of a wild one.
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            self._coef = coef
        return self._coef

    def predict(self, prefill_tokens: float, kv_blocks: float) -> float:
        a, b, c = self._fit()
        prefill_tokens, kv_blocks = self._inputs(prefill_tokens, kv_blocks)
        return max(0.0, float(a + b * prefill_tokens + c * kv_blocks))


@dataclass(frozen=True)
class EngineEstimate:
    worker_id: int
    ttft_s: float
    itl_s: float

    def scaled(self, ttft: float, itl: float) -> EngineEstimate:
        return EngineEstimate(self.worker_id, self.ttft_s * ttft, self.itl_s * itl)


@dataclass
class LatencyCorrection:
    """What clients see over what the engines' pass times predict, per dimension (reference §7.1 step 2's
    correction factors, applied to the load-based estimates): the frontend adds its own time and the
    engine queue may hold more than its reports show. Fed every load step with the frontend's averages
    over that step and the estimates taken at its end; a step without traffic moves the factors halfway
    back to 1. Factors are kept in [1, ``cap``]: the engine model is a lower bound on what a client can
    see, never an upper one."""

    cap: float = 20.0
    ttft: float = 1.0
    itl: float = 1.0

    def update(self, observed_ttft: float, observed_itl: float, estimates: list[EngineEstimate]) -> None:
        if not estimates or not (observed_ttft > 0 or observed_itl > 0):  # NaN compares False: idle
            self.ttft = 1.0 + (self.ttft - 1.0) / 2
            self.itl = 1.0 + (self.itl - 1.0) / 2
            return
        est_ttft = sum(e.ttft_s for e in estimates) / len(estimates)
        est_itl = sum(e.itl_s for e in estimates) / len(estimates)
        if observed_ttft > 0 and est_ttft > 0:
            self.ttft = min(self.cap, max(1.0, observed_ttft / est_ttft))
        if observed_itl > 0 and est_itl > 0:
            self.itl = min(self.cap, max(1.0, observed_itl / est_itl))


def estimate(model: PassTimeModel, report: dict[str, Any], *, avg_isl: float, chunk_tokens: int,
             kv_hit_rate: float = 0.0) -> tuple[float, float]:
    """(TTFT, ITL) an engine in the state of ``report`` would give a request arriving now."""
    kv = float(report.get("kv_used_blocks", 0))
    now = sample_from_report(report)
    itl = model.predict(now.prefill_tokens if now is not None else 0.0, kv)
    waiting = int(report.get("num_waiting", 0))
    tokens = (waiting + 1) * avg_isl * (1.0 - min(max(kv_hit_rate, 0.0), 1.0))
    chunk = max(1, chunk_tokens)
    full, rest = divmod(tokens, chunk)
    ttft = full * model.predict(chunk, kv) + (model.predict(rest, kv) if rest > 0 else 0.0)
    return ttft, itl


@dataclass
class LoadScaler:
    """Decides ±1 replica per interval from every engine's latest report.

    * up when **all** engines estimate TTFT above target, or all ITL above target (either dimension);
    * down when all engines are under ``target × sensitivity/100`` on **both** dimensions;
    * nothing while a previous decision is still being carried out (``pending``).
    """

    ttft_target_s: float
    itl_target_s: float
    sensitivity: float = 80.0
    max_samples: int = 64
    bucket: int = 16
    min_observations: int = 5
    kind: str = "agg"  # the pool's engines: agg, prefill or decode (what their models regress on)
    models: dict[int, PassTimeModel] = field(default_factory=dict)
    latest: dict[int, dict[str, Any]] = field(default_factory=dict)

    def observe(self, report: dict[str, Any], live_worker_ids: set[int] | None = None) -> None:
        """Take one report. With ``live_worker_ids``, a report from an engine not among them is dropped: a
        worker that left discovery keeps publishing while it drains, and its last (idle) report would
        otherwise vote against every scale-up after it is gone."""
        if live_worker_ids is not None and int(report.get("worker_id", 0)) not in live_worker_ids:
            return
        wid = int(report.get("worker_id", 0)) * 1024 + int(report.get("dp_rank", 0))
        s = sample_from_report(report)
        model = self.models.get(wid)
        if model is None:
            model = self.models[wid] = PassTimeModel(self.max_samples, self.bucket, self.min_observations, self.kind)
        if s is not None:
            model.add(s)
        self.latest[wid] = report

    def forget_missing(self, live_worker_ids: set[int]) -> None:
        """Drop engines that left (their last report would otherwise vote forever)."""
        for wid in list(self.latest):
            if wid // 1024 not in live_worker_ids:
                self.latest.pop(wid, None)
                self.models.pop(wid, None)

    def estimates(self, *, avg_isl: float, chunk_tokens: int, kv_hit_rate: float = 0.0) -> list[EngineEstimate]:
        out = []
        for wid, report in self.latest.items():
            model = self.models[wid]
            if not model.ready:
                continue
            ttft, itl = estimate(model, report, avg_isl=avg_isl, chunk_tokens=chunk_tokens, kv_hit_rate=kv_hit_rate)
            out.append(EngineEstimate(wid // 1024, ttft, itl))
        return out

    def borrowed_estimates(self, *, avg_isl: float, chunk_tokens: int,
                           kv_hit_rate: float = 0.0) -> list[EngineEstimate]:
        """Engines too new for a model of their own, estimated from their latest report with the pool's
        best-fed model (a pool's engines run the same hardware and settings). Used only to let such an
        engine vote for scaling down: an engine that only ever saw one steady kind of load never collects
        ``min_observations`` distinct points, and without its vote the pool could never shrink."""
        ready = [m for m in self.models.values() if m.ready]
        if not ready:
            return []
        pooled = max(ready, key=len)
        out = []
        for wid, report in self.latest.items():
            if self.models[wid].ready:
                continue
            ttft, itl = estimate(pooled, report, avg_isl=avg_isl, chunk_tokens=chunk_tokens, kv_hit_rate=kv_hit_rate)
            out.append(EngineEstimate(wid // 1024, ttft, itl))
        return out

    def decide(self, estimates: list[EngineEstimate], *, pending: bool, engines: int | None = None,
               borrowed: list[EngineEstimate] | None = None) -> Direction:
        """``engines``: how many engines the pool runs. Scaling down needs an estimate from every one of
        them (an engine too new to have a model might be the busy one): its own, or for an engine without
        a model yet one of ``borrowed`` (:meth:`borrowed_estimates`). Scaling up needs none of the
        borrowed ones (the engines that can be estimated are enough to say the pool is short)."""
        if pending or not estimates:
            return Direction.HOLD
        if all(e.ttft_s > self.ttft_target_s for e in estimates) or all(e.itl_s > self.itl_target_s
                                                                        for e in estimates):
            return Direction.UP
        low = self.sensitivity / 100.0
        voters = estimates + list(borrowed or ())
        if engines is not None and len(voters) < engines:
            return Direction.HOLD
        if all(e.ttft_s < self.ttft_target_s * low and e.itl_s < self.itl_target_s * low for e in voters):
            return Direction.DOWN
        return Direction.HOLD


def up_step(estimates: list[EngineEstimate], current: int, *, ttft_target_s: float, itl_target_s: float,
            max_step: int) -> int:
    """How many replicas an UP decision adds: enough to bring the *least* loaded engine's estimate down to
    target if load spreads evenly over the new pool (``ceil(current × ratio) − current``), at least 1 and
    at most ``max_step``. The ratio is taken per dimension over the engines that all exceed it (that is
    what made the decision UP), the larger of the two dimensions winning. ``max_step`` 1 is the
    reference's ±1 per interval; a larger step lets a pool catch a burst that starts from idle in one
    interval instead of one interval per replica."""
    if max_step <= 1 or not estimates:
        return 1
    ratio = 1.0
    for dim, target in ((lambda e: e.ttft_s, ttft_target_s), (lambda e: e.itl_s, itl_target_s)):
        if target > 0 and math.isfinite(target) and all(dim(e) > target for e in estimates):
            ratio = max(ratio, min(dim(e) for e in estimates) / target)
    wanted = math.ceil(max(1, current) * ratio - 1e-9) - current
    return max(1, min(max_step, wanted))


@dataclass
class ScaleDownWindow:
    """Scale-down cooldown: a replica is removed only once the pool has been calm — every load step
    voting DOWN — for ``window_s`` seconds; any other vote (HOLD, UP) restarts the wait. Bursty traffic
    with idle gaps shorter than the window keeps its replicas instead of starting every burst cold, and
    once the wait is over the pool steps down at the usual pace (a step does not restart it: only a busy
    vote does). Scale-up is never delayed. ``window_s`` 0 (the default) keeps the reference's
    behaviour. Pure: the caller passes the time."""

    window_s: float = 0.0
    last_busy: float | None = None

    def allow(self, now: float, direction: Direction) -> Direction:
        """``direction`` voted at ``now``; returns what to act on (DOWN held back to HOLD while the pool
        has not been calm for the whole window)."""
        if self.window_s <= 0:
            return direction
        if direction is not Direction.DOWN:
            self.last_busy = now
            return direction
        if self.last_busy is not None and now - self.last_busy < self.window_s:
            return Direction.HOLD
        return direction


def pool_ceiling(pool: str, *, max_gpu_budget: int, gpus_per_engine: dict[str, int], current: dict[str, int]) -> int:
    """Most replicas ``pool`` may have within ``max_gpu_budget`` with the other pools at their
    ``current`` replicas (0: no limit). The budget covers all scaled pools together: a prefill pool
    must not take the GPUs the decode pool runs on."""
    if max_gpu_budget <= 0:
        return 0
    others = sum(n * gpus_per_engine[p] for p, n in current.items() if p != pool)
    return max(1, (max_gpu_budget - others) // gpus_per_engine[pool])


def clamp_step(current: int, direction: Direction, *, min_replicas: int, max_replicas: int, step: int = 1) -> int:
    """``current`` moved ``step`` replicas in ``direction``, kept in [min_replicas, max_replicas]."""
    target = current + int(direction) * max(1, step)
    if max_replicas > 0:
        target = min(target, max_replicas)
    return max(min_replicas, target)
