"""The planner's two loops over the pure cores (reference §7.1, §7.2).

* **Throughput step** (every ``--adjustment-interval``): observe the interval's traffic, feed the
  predictors, correct the profiles with the observed latencies, compute replicas per pool, and apply
  them through the connector unless a previous change is still rolling out. With load-based scaling on,
  this result is only a floor for the load-based loop.
* **Load step** (every ``--loadbased-adjustment-interval``): every engine's TTFT/ITL estimate from its
  forward-pass regression; ±1 replica per pool when all engines agree, nothing while pending. Ours, off
  by default: a scale-up may add up to ``--loadbased-max-step-up`` replicas (sized by how far over
  target the engines are), and a scale-down waits until the pool has been calm for
  ``--loadbased-scale-down-window`` seconds.

In advisory mode (``--no-operation``) both steps compute, log and count their decisions but never
call the connector's setters.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from dynamo.planner.args import PlannerConfig
from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.planner.load_scaler import (
    Direction,
    LatencyCorrection,
    LoadScaler,
    ScaleDownWindow,
    clamp_step,
    pool_ceiling,
    up_step,
)
from dynamo.planner.metrics import PlannerMetrics
from dynamo.planner.perf_interpolation import PerfProfile
from dynamo.planner.predictors import LoadPredictor, make_predictor
from dynamo.planner.throughput import (
    EngineShape,
    IntervalStats,
    SlaTargets,
    ThroughputDecision,
    compute_replicas,
    decode_correction,
    prefill_correction,
)
from dynamo.planner.traffic import TrafficSource
from dynamo.runtime.errors import DynamoError

logger = logging.getLogger("dynamo.planner")


@dataclass
class Predictors:
    num_requests: LoadPredictor
    isl: LoadPredictor
    osl: LoadPredictor

    @classmethod
    def from_config(cls, c: PlannerConfig) -> Predictors:
        def one() -> LoadPredictor:
            return make_predictor(c.load_predictor, kalman_q_level=c.kalman_q_level, kalman_q_trend=c.kalman_q_trend,
                                  kalman_r=c.kalman_r, kalman_min_points=c.kalman_min_points,
                                  prophet_window=c.prophet_window_size)
        return cls(one(), one(), one())

    def add(self, num_requests: float, isl: float, osl: float) -> None:
        self.num_requests.add(num_requests)
        self.isl.add(isl)
        self.osl.add(osl)


@dataclass
class PlannerState:
    last_stats: IntervalStats | None = None
    throughput_floor: dict[str, int] = field(default_factory=dict)
    last_decision: ThroughputDecision | None = None


def _finite(x: float, default: float) -> float:
    return x if x is not None and not math.isnan(x) and x > 0 else default


class Planner:
    """One planner process's decisions. Contract: :meth:`throughput_step` and :meth:`load_step` are
    called by the process's loops (never concurrently with themselves); :meth:`observe_fpm` is fed
    every forward-pass report from the event plane as it arrives."""

    def __init__(self, config: PlannerConfig, connector: Connector, traffic: TrafficSource | None,
                 perf: PerfProfile | None, metrics: PlannerMetrics | None = None,
                 load_traffic: TrafficSource | None = None) -> None:
        self.config = config
        self.connector = connector
        self.traffic = traffic
        self.perf = perf
        self.metrics = metrics or PlannerMetrics()
        self.predictors = Predictors.from_config(config)
        # A second view of the frontend for the load loop's corrections (a scrape source keeps a
        # baseline per consumer, so the two loops cannot share one).
        self.load_traffic = load_traffic
        self.corrections = {pool: LatencyCorrection() for pool in config.pools()}
        self.state = PlannerState()
        self.shape = EngineShape(config.prefill_engine_num_gpu, config.decode_engine_num_gpu, config.min_endpoint,
                                 config.max_gpu_budget)
        c = config
        inf = math.inf
        # Per pool, the dimensions that pool answers for: prefill engines for TTFT, decode for ITL, agg both.
        targets = {"prefill": (c.ttft_s, inf), "decode": (c.ttft_s, c.itl_s) if c.mode == "agg" else (inf, c.itl_s)}
        self.scalers = {pool: LoadScaler(targets[pool][0], targets[pool][1], c.loadbased_sensitivity,
                                         c.max_num_fpm_samples, c.fpm_sample_bucket_size, c.load_min_observations,
                                         kind="agg" if c.mode == "agg" else pool)
                        for pool in c.pools()}
        self.down_windows = {pool: ScaleDownWindow(c.loadbased_scale_down_window) for pool in c.pools()}

    def warm_start(self, series: list[tuple[float, float, float]]) -> None:
        for n, isl, osl in series:
            self.predictors.add(n, isl, osl)

    # -- throughput ----------------------------------------------------------------------------------

    async def throughput_step(self) -> ThroughputDecision | None:
        c = self.config
        if self.traffic is None or self.perf is None:
            return None
        stats = await self.traffic.observe(c.adjustment_interval)
        self.state.last_stats = stats
        m = self.metrics
        for q, v in (("requests", stats.num_requests), ("isl", stats.isl), ("osl", stats.osl),
                     ("ttft_s", stats.ttft_s), ("itl_s", stats.itl_s)):
            m.observed.labels(q).set(v)
        self.predictors.add(stats.num_requests, stats.isl, stats.osl)
        current = await self.connector.current_replicas()
        p_corr = d_corr = None
        if not c.no_correction and stats.num_requests > 0:
            p_corr = prefill_correction(stats, self.perf)
            d_corr = decode_correction(stats, self.perf, max(1, current.get("decode", 1)), c.adjustment_interval)
        if p_corr is not None:
            m.correction.labels("prefill").set(p_corr)
        if d_corr is not None:
            m.correction.labels("decode").set(d_corr)
        next_req = self.predictors.num_requests.predict()
        next_isl = _finite(self.predictors.isl.predict(), c.isl)
        next_osl = _finite(self.predictors.osl.predict(), c.osl)
        for q, v in (("requests", next_req), ("isl", next_isl), ("osl", next_osl)):
            m.predicted.labels(q).set(v)
        decision = compute_replicas(c.mode, next_req=next_req, next_isl=next_isl, next_osl=next_osl,
                                    interval_s=c.adjustment_interval, targets=SlaTargets(c.ttft_s, c.itl_s),
                                    perf=self.perf, shape=self.shape, p_corr=p_corr, d_corr=d_corr)
        self.state.last_decision = decision
        wanted = {pool: n for pool, n in (("prefill", decision.prefill), ("decode", decision.decode)) if n is not None}
        logger.info("throughput: observed %.0f req (isl %.0f, osl %.0f, ttft %.3fs, itl %.4fs); predicted %.1f req "
                    "(isl %.0f, osl %.0f); corrections p=%s d=%s → %s", stats.num_requests, _nan0(stats.isl),
                    _nan0(stats.osl), _nan0(stats.ttft_s), _nan0(stats.itl_s), next_req, next_isl, next_osl,
                    _fmt(p_corr), _fmt(d_corr), wanted)
        if c.enable_loadbased_scaling:
            # Load-based scaling moves replicas; the throughput result only keeps it from going lower.
            self.state.throughput_floor = wanted
            return decision
        await self._apply(wanted, current, "throughput")
        return decision

    # -- load-based ----------------------------------------------------------------------------------

    def observe_fpm(self, pool: str, report: dict[str, Any], live_ids: set[int] | None = None) -> None:
        """``live_ids``: the pool's registered workers (reports from others are dropped)."""
        scaler = self.scalers.get(pool)
        if scaler is not None:
            scaler.observe(report, live_ids)

    def forget_workers(self, pool: str, live_ids: set[int]) -> None:
        scaler = self.scalers.get(pool)
        if scaler is not None:
            scaler.forget_missing(live_ids)

    async def load_step(self, now: float | None = None) -> dict[str, Direction]:
        """``now``: a monotonic time in seconds for the scale-down window (tests pass their own)."""
        c = self.config
        now = time.monotonic() if now is None else now
        pending = not await self.connector.is_ready()
        current = await self.connector.current_replicas()
        observed = await self._observe_for_load()
        # The prompt length a new request brings (the TTFT estimate's work): the frontend's average over
        # this step, else over the last throughput interval, else --isl.
        stats = self.state.last_stats
        avg_isl = _finite(observed.isl if observed else math.nan, _finite(stats.isl if stats else math.nan, c.isl))
        wanted: dict[str, int] = {}
        out: dict[str, Direction] = {}
        planned = dict(current)  # pools decided earlier in this step count against the GPU budget as planned
        for pool, scaler in self.scalers.items():
            estimates = scaler.estimates(avg_isl=avg_isl, chunk_tokens=c.max_num_batched_tokens)
            borrowed = scaler.borrowed_estimates(avg_isl=avg_isl, chunk_tokens=c.max_num_batched_tokens)
            if observed is not None and not c.no_correction:
                corr = self.corrections[pool]
                corr.update(observed.ttft_s, observed.itl_s, estimates)
                self.metrics.correction.labels(f"{pool}_load_ttft").set(corr.ttft)
                self.metrics.correction.labels(f"{pool}_load_itl").set(corr.itl)
                estimates = [e.scaled(corr.ttft, corr.itl) for e in estimates]
                borrowed = [e.scaled(corr.ttft, corr.itl) for e in borrowed]
            if estimates:
                self.metrics.estimated.labels(pool, "ttft").set(max(e.ttft_s for e in estimates))
                self.metrics.estimated.labels(pool, "itl").set(max(e.itl_s for e in estimates))
            direction = scaler.decide(estimates, pending=pending, engines=current.get(pool), borrowed=borrowed)
            if not pending:  # a pending change's HOLD says nothing about the load
                direction = self.down_windows[pool].allow(now, direction)
            logger.debug("load-based %s: %s%s", pool, direction.name, " (pending)" if pending else "")
            if logger.isEnabledFor(logging.DEBUG):
                for e in estimates:
                    logger.debug("  engine %x: ttft %.3fs itl %.4fs", e.worker_id, e.ttft_s, e.itl_s)
            out[pool] = direction
            have = current.get(pool, 0)
            floor = max(c.min_endpoint, self.state.throughput_floor.get(pool, 0))
            ceiling = pool_ceiling(pool, max_gpu_budget=c.max_gpu_budget, current=planned,
                                   gpus_per_engine={"prefill": c.prefill_engine_num_gpu,
                                                    "decode": c.decode_engine_num_gpu})
            step = (up_step(estimates, have, ttft_target_s=scaler.ttft_target_s, itl_target_s=scaler.itl_target_s,
                            max_step=c.loadbased_max_step_up) if direction is Direction.UP else 1)
            target = clamp_step(have, direction, min_replicas=floor, max_replicas=ceiling, step=step)
            if direction is Direction.HOLD and have < floor:
                target = have + 1  # a throughput floor above us: climb one step at a time too
            planned[pool] = target
            if target != have:
                wanted[pool] = target
                logger.info("load-based: %s %s (%d → %d; worst ttft %.3fs, itl %.4fs over %d engines)",
                            pool, direction.name, have, target, max((e.ttft_s for e in estimates), default=0),
                            max((e.itl_s for e in estimates), default=0), len(estimates))
        if wanted and not pending:
            await self._apply(wanted, current, "loadbased")
        return out

    async def _observe_for_load(self) -> IntervalStats | None:
        if self.load_traffic is None:
            return None
        try:
            return await self.load_traffic.observe(self.config.loadbased_adjustment_interval)
        except DynamoError as exc:
            # Corrections are a refinement: without the frontend's view, decide on the engines' own.
            logger.debug("no latency observation for load-based corrections: %s", exc)
            return None

    # -- applying ------------------------------------------------------------------------------------

    async def _apply(self, wanted: dict[str, int], current: dict[str, int], source: str) -> None:
        m = self.metrics
        for pool, n in wanted.items():
            m.desired.labels(pool).set(n)
        changed = {p: n for p, n in wanted.items() if current.get(p) != n}
        if not changed:
            return
        ready = await self.connector.is_ready()
        applied = not self.config.no_operation and ready
        for pool, n in changed.items():
            direction = "up" if n > current.get(pool, 0) else "down"
            m.decisions.labels(pool, source, direction, str(applied).lower()).inc()
        if self.config.no_operation:
            logger.info("advisory (--no-operation): would set %s", changed)
            return
        if not ready:
            logger.info("previous scaling still in progress: not applying %s", changed)
            return
        await self.connector.set_component_replicas([TargetReplica(p, n) for p, n in changed.items()])
        after = await self.connector.current_replicas()
        for pool, n in after.items():
            m.actual.labels(pool).set(n)


def _nan0(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else x


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
