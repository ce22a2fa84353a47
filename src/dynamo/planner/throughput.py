"""Throughput (SLA) replica math (reference §7.1): correction factors, replicas per sub-component, and
the GPU budget. Pure: inputs are observations and predictions, outputs are replica counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from dynamo.planner.perf_interpolation import PerfProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntervalStats:
    """What the frontend saw over one adjustment interval (averages per request; seconds)."""

    num_requests: float
    isl: float
    osl: float
    ttft_s: float
    itl_s: float
    request_duration_s: float


@dataclass(frozen=True)
class SlaTargets:
    ttft_s: float
    itl_s: float


@dataclass(frozen=True)
class EngineShape:
    prefill_engine_num_gpu: int = 1
    decode_engine_num_gpu: int = 1
    min_endpoint: int = 1
    max_gpu_budget: int = 8


def prefill_correction(stats: IntervalStats, perf: PerfProfile) -> float | None:
    """``actual_ttft / expected_ttft(isl)``: > 1 when the engines are slower than their profile (queueing,
    a noisy neighbour); None without a usable observation."""
    expected = perf.prefill.ttft_s(stats.isl)
    if not _usable(stats.ttft_s) or expected <= 0:
        return None
    return stats.ttft_s / expected


def decode_correction(stats: IntervalStats, perf: PerfProfile, num_decode: int, interval_s: float) -> float | None:
    """``actual_itl / expected_itl`` at the interval's mean concurrency per decode engine and the mean
    context ``isl + osl/2``."""
    if not _usable(stats.itl_s) or num_decode <= 0 or interval_s <= 0:
        return None
    concurrency = stats.num_requests / num_decode * stats.request_duration_s / interval_s
    expected = perf.decode.expected_itl_s(concurrency, stats.isl + stats.osl / 2)
    if expected <= 0:
        return None
    return stats.itl_s / expected


def _usable(x: float) -> bool:
    return x is not None and not math.isnan(x) and x > 0


def prefill_load(next_req: float, next_isl: float, interval_s: float, p_corr: float | None, perf: PerfProfile,
                 shape: EngineShape) -> float:
    """Prefill engines the predicted load needs, unrounded. A correction above 1 is not applied: slow
    TTFT from queueing is fixed by the engines added here, not by more on top of them."""
    thpt = perf.prefill.throughput_per_gpu(next_isl)
    if next_req <= 0 or thpt <= 0:
        return 0.0
    corr = 1.0 if p_corr is None else min(1.0, p_corr)
    return next_req * next_isl / interval_s * corr / thpt / shape.prefill_engine_num_gpu


def decode_load(next_req: float, next_isl: float, next_osl: float, interval_s: float, d_corr: float | None,
                itl_target_s: float, perf: PerfProfile, shape: EngineShape) -> float:
    """Decode engines the predicted load needs, unrounded: tokens/s over the best throughput per GPU
    that still meets the (corrected) ITL target at the expected context."""
    corrected_itl = itl_target_s if d_corr is None or d_corr <= 0 else itl_target_s / d_corr
    thpt = perf.decode.best_throughput_per_gpu(corrected_itl, next_isl + next_osl / 2)
    if next_req <= 0 or thpt <= 0:
        return 0.0
    return next_req * next_osl / interval_s / thpt / shape.decode_engine_num_gpu


def replicas(load: float, min_endpoint: int) -> int:
    return max(min_endpoint, math.ceil(load - 1e-9))


def apply_gpu_budget(prefill: int, decode: int, shape: EngineShape) -> tuple[int, int]:
    """Scale both pools down proportionally when they need more GPUs than ``max_gpu_budget``; decode gets
    the GPUs prefill leaves. ``min_endpoint`` engines each are kept even past the budget (logged)."""
    pg, dg, budget = shape.prefill_engine_num_gpu, shape.decode_engine_num_gpu, shape.max_gpu_budget
    total = prefill * pg + decode * dg
    if budget <= 0 or total <= budget:
        return prefill, decode
    scale = budget / total
    p = max(shape.min_endpoint, round(prefill * scale))
    d = max(shape.min_endpoint, (budget - p * pg) // dg)
    if p * pg + d * dg > budget:
        logger.warning("GPU budget %d is below the minimum of %d prefill + %d decode engines", budget, p, d)
    return p, d


def apply_gpu_budget_single(count: int, engine_num_gpu: int, shape: EngineShape) -> int:
    """Budget for a single pool (agg, or a planner for only prefill or only decode)."""
    if shape.max_gpu_budget <= 0 or count * engine_num_gpu <= shape.max_gpu_budget:
        return count
    return max(shape.min_endpoint, shape.max_gpu_budget // engine_num_gpu)


@dataclass(frozen=True)
class ThroughputDecision:
    prefill: int | None
    decode: int | None
    p_corr: float | None
    d_corr: float | None


def compute_replicas(mode: str, *, next_req: float, next_isl: float, next_osl: float, interval_s: float,
                     targets: SlaTargets, perf: PerfProfile, shape: EngineShape, p_corr: float | None,
                     d_corr: float | None) -> ThroughputDecision:
    """Replicas per pool for ``mode``: ``disagg`` (prefill + decode), ``prefill``, ``decode`` or ``agg``.

    In ``agg`` every engine does both phases, so one engine's time is split between them: the pool needs
    the sum of the prefill and decode loads (``decode`` holds the agg worker count).
    """
    p_load = prefill_load(next_req, next_isl, interval_s, p_corr, perf, shape)
    d_load = decode_load(next_req, next_isl, next_osl, interval_s, d_corr, targets.itl_s, perf, shape)
    if mode == "agg":
        n = apply_gpu_budget_single(replicas(p_load + d_load, shape.min_endpoint), shape.decode_engine_num_gpu, shape)
        return ThroughputDecision(None, n, p_corr, d_corr)
    if mode == "prefill":
        n = apply_gpu_budget_single(replicas(p_load, shape.min_endpoint), shape.prefill_engine_num_gpu, shape)
        return ThroughputDecision(n, None, p_corr, d_corr)
    if mode == "decode":
        n = apply_gpu_budget_single(replicas(d_load, shape.min_endpoint), shape.decode_engine_num_gpu, shape)
        return ThroughputDecision(None, n, p_corr, d_corr)
    p, d = apply_gpu_budget(replicas(p_load, shape.min_endpoint), replicas(d_load, shape.min_endpoint), shape)
    return ThroughputDecision(p, d, p_corr, d_corr)
