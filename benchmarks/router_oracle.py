"""Where the KV router loses prefix hits, measured with the simulated-time replay (``dynamo.replay``).

For the Mooncake conversation trace on ``--num-workers`` mocker workers of ``--kv-blocks`` blocks each,
replays round robin and the KV router at each ``--weights`` overlap weight, and splits the gap to the
oracle (one engine with an unlimited prefix cache: every reusable prefix is reused) into:

* ``capacity``: reuse no worker could offer at routing time (evicted, or spread over workers) —
  oracle minus best-available;
* ``choice``: the best-cached worker had more than the chosen one (the load terms won) —
  best-available minus predicted;
* ``admission``: predicted by the router but gone when the engine admitted the request (evicted
  while queued) — predicted minus reused.

    python benchmarks/router_oracle.py                            # 16 workers, default caches
    python benchmarks/router_oracle.py --kv-blocks 2048 --weights 1,2,4,8
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traces import load_trace, oracle_hit_rate, trace_path

from dynamo.kv_router.config import KvRouterConfig
from dynamo.mocker.args import MockEngineArgs
from dynamo.replay.report import summarize
from dynamo.replay.simulation import ReplaySimulation
from dynamo.replay.workload import parse_mooncake

TRACE_BLOCK = 512


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="conversation")
    p.add_argument("--requests", type=int, default=None, help="first N requests (default: all)")
    p.add_argument("--num-workers", type=int, default=16)
    p.add_argument("--kv-blocks", type=int, default=16384, help="mocker KV blocks per worker")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--weights", default="1,2,4", help="KV router overlap score weights to try")
    args = p.parse_args(argv)
    gc.set_threshold(50_000, 50, 1000)
    with trace_path(args.trace).open() as f:
        lines = [json.loads(ln) for ln in f if ln.strip()][: args.requests]
    requests = parse_mooncake(lines)
    oracle = oracle_hit_rate(load_trace(args.trace, args.requests), [r.input_length for r in requests],
                             TRACE_BLOCK, args.block_size)
    print(f"{len(requests)} requests, {args.num_workers} workers x {args.kv_blocks} blocks; oracle hit {oracle:.4f}")
    print(f"{'router':<16}{'hit':>8}{'capacity':>10}{'choice':>9}{'admission':>11}{'TTFT p50':>10}{'p99':>8}"
          f"{'wall s':>8}")
    engine = MockEngineArgs(num_gpu_blocks=args.kv_blocks, block_size=args.block_size)
    runs = [("round_robin", 1.0)] + [("kv_router", float(w)) for w in args.weights.split(",") if w]
    for mode, weight in runs:
        t0 = time.perf_counter()
        res = ReplaySimulation(requests, engine_args=engine, num_workers=args.num_workers, router_mode=mode,
                               router_config=KvRouterConfig(overlap_score_weight=weight)).run()
        s = summarize(res, 0.0)
        recs = [r for r in res.records if r.admissions]
        total = sum(r.input_length for r in recs)
        bs = args.block_size
        best = sum(min(r.best_cached_tokens, r.input_length) for r in recs) / total
        predicted = sum(min(r.predicted_cached_tokens, r.input_length) for r in recs) / total
        # an engine recomputes a fully cached prompt's last block: compare the prediction like with like
        lost = sum(max(0, min(r.predicted_cached_tokens, (r.input_length - 1) // bs * bs) - r.reused_tokens)
                   for r in recs) / total
        hit = s["first_admission_prefix_cache_reused_ratio"]
        name = mode if mode == "round_robin" else f"kv w={weight:g}"
        capacity = oracle - best if mode != "round_robin" else float("nan")
        choice = best - predicted if mode != "round_robin" else float("nan")
        print(f"{name:<16}{hit:>8.4f}{capacity:>10.4f}{choice:>9.4f}{lost:>11.4f}{s['median_ttft_ms']:>10.0f}"
              f"{s['p99_ttft_ms']:>8.0f}{time.perf_counter() - t0:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
