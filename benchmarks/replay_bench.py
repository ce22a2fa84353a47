"""Trace replay side by side: ``python -m dynamo.replay`` (ours) vs ai-dynamo 1.6.1's
``dynamo.replay.api.run_trace_replay`` (Rust core) on the same Mooncake trace, same fleet, same router.

Each system runs in its own interpreter (ours from ``src/``, the reference from
``benchmarks/.venv-ai-dynamo``, installed on first use as ``serve_bench.py --compare ai-dynamo`` does)
and reports its summary as JSON; this script prints TTFT/ITL/e2e percentiles, prefix reuse and replay
wall time for both, and the ratios ours/reference (goal: latencies and reuse within 10%, wall time
≤ 2×). This machine's cores are shared, so each system's whole-process CPU time (start-up, trace
loading and replay) is printed beside the replay's own wall time.

    python benchmarks/replay_bench.py                                  # whole conversation trace, 16 workers
    python benchmarks/replay_bench.py --requests 2000 --num-workers 4 --router-mode round_robin
    python benchmarks/replay_bench.py --repeat 3 --json out.json       # best of 3 alternating runs each
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import AI_DYNAMO_VENV, REPO, ensure_ai_dynamo
from traces import trace_path

ROWS = [
    ("TTFT mean (ms)", "mean_ttft_ms"), ("TTFT p50 (ms)", "median_ttft_ms"), ("TTFT p90 (ms)", "p90_ttft_ms"),
    ("TTFT p99 (ms)", "p99_ttft_ms"), ("TTST mean (ms)", "mean_ttst_ms"),
    ("ITL mean (ms)", "mean_itl_ms"), ("ITL p50 (ms)", "median_itl_ms"), ("ITL p90 (ms)", "p90_itl_ms"),
    ("ITL p99 (ms)", "p99_itl_ms"), ("TPOT mean (ms)", "mean_tpot_ms"),
    ("e2e mean (ms)", "mean_e2e_latency_ms"), ("e2e p99 (ms)", "p99_e2e_latency_ms"),
    ("prefix reuse ratio", "prefix_cache_reused_ratio"), ("completed", "completed_requests"),
    ("simulated duration (s)", "duration_s"), ("replay wall time (s)", "wall_s"),
    ("process CPU time (s)", "cpu_s"),
]

_REFERENCE_SCRIPT = """
import json, sys, time
from dynamo.replay.api import run_trace_replay
opts = json.loads(sys.argv[2])
t0 = time.perf_counter()
report = run_trace_replay([sys.argv[1]], **opts)
summary = dict(report.summary)
summary["outer_wall_ms"] = (time.perf_counter() - t0) * 1000.0
json.dump(summary, open(sys.argv[3], "w"))
"""


def slice_trace(src: Path, n: int | None, out: Path) -> Path:
    if n is None:
        return src
    with src.open() as f, out.open("w") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return out


def child_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_ours(trace: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    report = tmp / "ours.json"
    cmd = [sys.executable, "-m", "dynamo.replay", str(trace), "--num-workers", str(args.num_workers),
           "--router-mode", args.router_mode, "--trace-block-size", str(args.trace_block_size),
           "--arrival-speedup-ratio", str(args.arrival_speedup_ratio), "--report-json", str(report), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    c0 = child_cpu_s()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads(report.read_text())["summary"]
    summary["outer_wall_ms"] = (time.perf_counter() - t0) * 1000.0
    summary["cpu_s"] = child_cpu_s() - c0
    return summary


def run_reference(trace: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    system = ensure_ai_dynamo(args.ai_dynamo_venv)
    out = tmp / "ref.json"
    opts = {"num_workers": args.num_workers, "router_mode": args.router_mode,
            "trace_block_size": args.trace_block_size, "arrival_speedup_ratio": args.arrival_speedup_ratio}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "DYN_"))}
    env.update({"DYN_LOG": "error", "RUST_LOG": "error"})
    c0 = child_cpu_s()
    with (tmp / "ref.log").open("w") as log:
        subprocess.run([str(system.python), "-c", _REFERENCE_SCRIPT, str(trace), json.dumps(opts), str(out)],
                       check=True, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    summary = json.loads(out.read_text())
    summary["cpu_s"] = child_cpu_s() - c0
    return summary


def _value(summary: dict[str, Any], key: str) -> float | None:
    if key == "duration_s":
        return summary["duration_ms"] / 1000.0
    if key == "wall_s":
        return summary["wall_time_ms"] / 1000.0
    v = summary.get(key)
    return None if v is None else float(v)


def table(ours: dict[str, Any], ref: dict[str, Any] | None) -> str:
    lines = [f"{'metric':<24}{'ours':>12}{'reference':>12}{'ours/ref':>10}"]
    for label, key in ROWS:
        a = _value(ours, key)
        b = _value(ref, key) if ref else None
        ratio = f"{a / b:.2f}x" if a is not None and b else ""
        fa = "" if a is None else f"{a:.4f}" if key.endswith("ratio") else f"{a:,.2f}"
        fb = "" if b is None else f"{b:.4f}" if key.endswith("ratio") else f"{b:,.2f}"
        lines.append(f"{label:<24}{fa:>12}{fb:>12}{ratio:>10}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="conversation", help="conversation, synthetic, or a JSONL path")
    p.add_argument("--requests", type=int, default=None, help="replay only the first N lines (default: all)")
    p.add_argument("--num-workers", type=int, default=16)
    p.add_argument("--router-mode", default="kv_router", choices=["kv_router", "round_robin"])
    p.add_argument("--trace-block-size", type=int, default=512)
    p.add_argument("--arrival-speedup-ratio", type=float, default=1.0)
    p.add_argument("--no-reference", action="store_true", help="run ours only")
    p.add_argument("--repeat", type=int, default=1,
                   help="alternate N runs per system; report the run with the least CPU time of each "
                        "(this machine's cores are shared)")
    p.add_argument("--ai-dynamo-venv", type=Path, default=AI_DYNAMO_VENV)
    p.add_argument("--json", type=Path, help="also write both summaries here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as d:
        tmp = Path(d)
        trace = slice_trace(trace_path(args.trace), args.requests, tmp / "trace.jsonl")
        print(f"trace {trace_path(args.trace).name} ({args.requests or 'all'} requests), {args.num_workers} "
              f"workers, {args.router_mode}", flush=True)
        ours_runs: list[dict[str, Any]] = []
        ref_runs: list[dict[str, Any]] = []
        for _ in range(max(1, args.repeat)):
            ours_runs.append(run_ours(trace, args, tmp))
            if not args.no_reference:
                ref_runs.append(run_reference(trace, args, tmp))
        ours = min(ours_runs, key=lambda r: r["cpu_s"])
        ref = min(ref_runs, key=lambda r: r["cpu_s"]) if ref_runs else None
    print(table(ours, ref))
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "reference": ref}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
