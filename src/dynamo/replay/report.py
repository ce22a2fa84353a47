"""Summary of a replay: AIPerf-style latency statistics, throughput and prefix reuse.

Keys follow the reference replay's report (``mean_ttft_ms``, ``p99_itl_ms``,
``prefix_cache_reused_ratio``, ...) so the two can be compared field by field. Definitions:

* TTFT = first token − arrival; TTST = second token − first token; e2e = last token − arrival.
* TPOT (per request) = ``(last − first) / (tokens − 1)``.
* ITL = every gap between consecutive tokens of a request, all requests pooled; output throughput per
  user = ``1000 / gap`` over the same gaps (as the reference computes it).
* ``prefix_cache_reused_ratio`` = cached prompt tokens over all admissions (preempted requests are
  admitted again) / prompt tokens of those admissions; the ``first_admission`` variant counts each
  request once. ``router_predicted_cached_ratio`` = the router's overlap at routing time / prompt tokens;
  ``router_best_available_cached_ratio`` = the largest overlap any worker had then / prompt tokens.
* ``sla_attainment`` = requests that completed with TTFT <= ``--ttft`` and mean ITL (TPOT) <= ``--itl``
  (a one-token request meets any ITL) / all requests; ``sla_ttft_attainment`` and ``sla_itl_attainment``
  count one target each.
* ``worker_seconds`` = simulated seconds each worker held a GPU (starting, serving or draining), summed;
  ``peak_workers`` the most at once. Without a planner: ``--num-workers`` × duration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynamo.replay.simulation import ReplayResult, RequestRecord

TITLE = "Dynamo-Py replay | LLM Metrics"
STAT_COLUMNS = ("avg", "min", "max", "p99", "p90", "p75", "std")
_STATS = ("mean", "min", "max", "median", "p75", "p90", "p95", "p99", "std")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, min, max, percentiles and (population) standard deviation; NaN for no values.

    numpy here: a full-trace replay pools millions of inter-token gaps.
    """
    if len(values) == 0:
        return {k: math.nan for k in _STATS}
    arr = np.asarray(values, dtype=np.float64)
    p50, p75, p90, p95, p99 = np.percentile(arr, [50, 75, 90, 95, 99])
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()), "median": float(p50),
            "p75": float(p75), "p90": float(p90), "p95": float(p95), "p99": float(p99), "std": float(arr.std())}


def sla(records: Sequence[RequestRecord], ttft_ms: float, itl_ms: float) -> dict[str, float]:
    """Shares of all requests meeting the TTFT target, the ITL target, and both (see the module doc)."""
    n = len(records)
    if not n:
        return {"sla_attainment": math.nan, "sla_ttft_attainment": math.nan, "sla_itl_attainment": math.nan}
    ok_ttft = ok_itl = ok = 0
    for r in records:
        if r.status != "completed" or r.first_token_ms is None or r.last_token_ms is None:
            continue
        t = r.first_token_ms - r.arrival_ms <= ttft_ms
        i = r.tokens < 2 or (r.last_token_ms - r.first_token_ms) / (r.tokens - 1) <= itl_ms
        ok_ttft += t
        ok_itl += i
        ok += t and i
    return {"sla_attainment": ok / n, "sla_ttft_attainment": ok_ttft / n, "sla_itl_attainment": ok_itl / n}


def fleet_summary(result: ReplayResult) -> dict[str, Any]:
    if result.fleet is None:
        return {"worker_seconds": result.num_workers * result.duration_ms / 1000.0,
                "peak_workers": result.num_workers}
    return result.fleet.summary(result.duration_ms)


def summarize(result: ReplayResult, wall_time_ms: float, *, ttft_ms: float = 500.0,
              itl_ms: float = 50.0) -> dict[str, Any]:
    recs = result.records
    done = [r for r in recs if r.status == "completed"]
    ttft = [r.first_token_ms - r.arrival_ms for r in done if r.first_token_ms is not None]
    ttst = [r.second_token_ms - r.first_token_ms for r in done
            if r.second_token_ms is not None and r.first_token_ms is not None]
    e2e = [r.last_token_ms - r.arrival_ms for r in done if r.last_token_ms is not None]
    tpot = [(r.last_token_ms - r.first_token_ms) / (r.tokens - 1) for r in done
            if r.tokens > 1 and r.last_token_ms is not None and r.first_token_ms is not None]
    # Millions of gaps in a full-trace replay: numpy, not a Python loop (same IEEE divisions).
    itl = np.asarray(result.itl_ms, dtype=np.float64)
    per_user = 1000.0 / itl[itl > 0]
    total_in = sum(r.input_length for r in recs)
    total_out = sum(r.tokens for r in done)
    admitted = [r for r in recs if r.admissions]
    reused_first = sum(max(r.reused_tokens, 0) for r in admitted)
    reused_all = sum(r.reused_all_admissions for r in admitted)
    prompt_all = sum(r.input_length * r.admissions for r in admitted)
    prompt_first = sum(r.input_length for r in admitted)
    predicted = sum(min(r.predicted_cached_tokens, r.input_length) for r in admitted)
    best = sum(min(r.best_cached_tokens, r.input_length) for r in admitted)
    duration_s = result.duration_ms / 1000.0
    out: dict[str, Any] = {
        "num_requests": len(recs),
        "completed_requests": len(done),
        "rejected_requests": sum(r.status == "rejected" for r in recs),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "duration_ms": result.duration_ms,
        "wall_time_ms": wall_time_ms,
        "num_passes": result.num_passes,
        "num_preemptions": result.num_preemptions,
        "request_throughput_rps": len(done) / duration_s if duration_s > 0 else math.nan,
        "input_throughput_tok_s": total_in / duration_s if duration_s > 0 else math.nan,
        "output_throughput_tok_s": total_out / duration_s if duration_s > 0 else math.nan,
        "prefix_cache_reused_ratio": reused_all / prompt_all if prompt_all else math.nan,
        "first_admission_prefix_cache_reused_ratio": reused_first / prompt_first if prompt_first else math.nan,
        "router_predicted_cached_ratio": predicted / prompt_first if prompt_first else math.nan,
        # what the best-cached worker had at routing time: the gap to the predicted ratio is hit rate
        # the router gave up for load balance
        "router_best_available_cached_ratio": best / prompt_first if prompt_first else math.nan,
        "num_ttft_samples": len(ttft),
        "num_tpot_samples": len(tpot),
        "num_itl_samples": len(result.itl_ms),
        "sla_ttft_ms": ttft_ms,
        "sla_itl_ms": itl_ms,
        **sla(recs, ttft_ms, itl_ms),
        **fleet_summary(result),
    }
    for name, values in (("ttft_ms", ttft), ("ttst_ms", ttst), ("tpot_ms", tpot), ("itl_ms", result.itl_ms),
                         ("e2e_latency_ms", e2e), ("output_token_throughput_per_user", per_user)):
        for stat, v in describe(values).items():
            out[f"{stat}_{name}"] = v
    return out


def per_request(result: ReplayResult) -> list[dict[str, Any]]:
    return [
        {"index": r.index, "arrival_ms": r.arrival_ms, "worker": r.worker, "status": r.status,
         "input_length": r.input_length, "output_length": r.tokens, "reused_input_tokens": max(r.reused_tokens, 0),
         "predicted_cached_tokens": r.predicted_cached_tokens, "best_cached_tokens": r.best_cached_tokens,
         "admissions": r.admissions,
         "ttft_ms": r.ttft_ms, "e2e_latency_ms": r.e2e_ms}
        for r in result.records
    ]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "N/A" if math.isnan(v) else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "N/A" if v is None else str(v)


def format_table(summary: dict[str, Any]) -> str:
    """The AIPerf-style table the CLI prints."""
    rows: list[list[str]] = []
    for label, key in (("Time to First Token (ms)", "ttft_ms"), ("Time to Second Token (ms)", "ttst_ms"),
                       ("Request Latency (ms)", "e2e_latency_ms"), ("Inter Token Latency (ms)", "itl_ms"),
                       ("Output Token Throughput Per User (tokens/sec/user)", "output_token_throughput_per_user")):
        rows.append([label, *(_fmt(summary.get(f"{'mean' if c == 'avg' else c}_{key}")) for c in STAT_COLUMNS)])
    na = ["N/A"] * (len(STAT_COLUMNS) - 1)
    rows.append(["Output Token Throughput (tokens/sec)", _fmt(summary.get("output_throughput_tok_s")), *na])
    rows.append(["Request Throughput (requests/sec)", _fmt(summary.get("request_throughput_rps")), *na])
    rows.append(["Request Count (requests)", _fmt(summary.get("completed_requests")), *na])
    headers = ["Metric", *STAT_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "┃ " + " ┃ ".join([first, *rest]) + " ┃"

    sep = "━" * (sum(widths) + 3 * len(widths) + 1)
    lines = [TITLE, sep, line(headers), sep, *(line(r) for r in rows), sep]
    lines.append(f"Wall Time (ms): {_fmt(summary.get('wall_time_ms'))}")
    lines.append(f"Simulated Duration (ms): {_fmt(summary.get('duration_ms'))}")
    lines.append(f"SLA Attainment (TTFT <= {_fmt(summary.get('sla_ttft_ms'))} ms, ITL <= "
                 f"{_fmt(summary.get('sla_itl_ms'))} ms): {_ratio(summary.get('sla_attainment'))}")
    lines.append(f"Worker Seconds: {_fmt(summary.get('worker_seconds'))} (peak {_fmt(summary.get('peak_workers'))} "
                 "workers)")
    if "scale_up_workers" in summary:
        lines.append(f"Planner: {summary['scale_up_workers']} workers started, {summary['scale_down_workers']} "
                     f"drained; {summary['final_serving_workers']} serving at the end")
    for label, key in (("Prefix Cache Reused Ratio", "prefix_cache_reused_ratio"),
                       ("First Admission Prefix Cache Reused Ratio", "first_admission_prefix_cache_reused_ratio"),
                       ("Router Predicted Cached Ratio", "router_predicted_cached_ratio"),
                       ("Best Available Cached Ratio", "router_best_available_cached_ratio")):
        lines.append(f"{label}: {_ratio(summary.get(key))}")
    return "\n".join(lines)


def _ratio(v: Any) -> str:
    return "N/A" if v is None or math.isnan(v) else f"{v:.4f}"
