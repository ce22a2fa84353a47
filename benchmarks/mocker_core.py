"""Throughput of the mocker's pure core (scheduler + KV manager + perf model), no sleeping.

Closed loop: ``concurrency`` requests are kept in flight (a finished request is replaced at once), with
512-token prompts sharing a 256-token system prefix and 256 output tokens, default engine args. Reports
passes/s and emitted tokens/s of wall time (median of 3 runs), and — to show whether the core could keep
up with a live engine — the ratio of the simulated pass time at ``--speedup`` (default 1000) to the wall
time the core needs for that pass: a ratio >= 1 means the core is not the bottleneck.

    python benchmarks/mocker_core.py [--passes 2000] [--speedup 1000] [--concurrency 64 256]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.scheduler import Scheduler

PROMPT_LEN = 512
SHARED_PREFIX = 256
OUTPUT_LEN = 256


@dataclass
class RunStats:
    passes_per_s: float
    tokens_per_s: float
    wall_us_per_pass: float
    sim_ms_per_pass: float
    decode_only_wall_us: float
    decode_only_sim_ms: float


def one_run(concurrency: int, passes: int, seed: int) -> RunStats:
    rng = random.Random(seed)
    sched = Scheduler(MockEngineArgs(seed=seed))
    prefix = [rng.randrange(1000, 30000) for _ in range(SHARED_PREFIX)]
    # prompts are generated up front so the timed region measures the core, not the harness
    pool = [prefix + [rng.randrange(1000, 30000) for _ in range(PROMPT_LEN - SHARED_PREFIX)] for _ in range(512)]
    counter = 0

    def submit() -> None:
        nonlocal counter
        sched.add_request(f"r{counter}", pool[counter % len(pool)], OUTPUT_LEN)
        counter += 1

    for _ in range(concurrency):
        submit()
    # warm up past the initial prefill burst so the measurement is the steady mixed state
    for _ in range(concurrency // 16 + 5):
        for _ in sched.step().finished:
            submit()
        sched.drain_kv_events()

    tokens = 0
    sim_ms = 0.0
    decode_wall = 0.0
    decode_sim = 0.0
    decode_passes = 0
    perf = time.perf_counter
    wall = 0.0
    for _ in range(passes):
        t0 = perf()
        r = sched.step()
        dt = perf() - t0
        wall += dt
        tokens += len(r.emitted)
        sim_ms += r.duration_ms
        if not r.prefill_tokens:
            decode_wall += dt
            decode_sim += r.duration_ms
            decode_passes += 1
        t1 = perf()
        for _ in r.finished:
            submit()
        sched.drain_kv_events()
        wall += perf() - t1  # admitting new requests and draining events is core work too
    return RunStats(
        passes_per_s=passes / wall,
        tokens_per_s=tokens / wall,
        wall_us_per_pass=wall / passes * 1e6,
        sim_ms_per_pass=sim_ms / passes,
        decode_only_wall_us=decode_wall / max(decode_passes, 1) * 1e6,
        decode_only_sim_ms=decode_sim / max(decode_passes, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=2000)
    ap.add_argument("--speedup", type=float, default=1000.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args()

    header = (
        f"{'concurrency':>11} {'passes/s':>10} {'tokens/s':>11} {'wall µs/pass':>13} {'sim ms/pass':>12} "
        f"{'decode µs/pass':>15} {'sim/wall @' + format(ns.speedup, 'g') + 'x':>16} {'break-even x':>13}"
    )
    print(header)
    print("-" * len(header))
    for c in ns.concurrency:
        runs = [one_run(c, ns.passes, seed) for seed in range(ns.runs)]

        def med(attr: str, runs: list[RunStats] = runs) -> float:
            return statistics.median(getattr(r, attr) for r in runs)

        # simulated wall time of a pass at the given speedup vs what the core spends computing it
        ratio = (med("sim_ms_per_pass") / ns.speedup * 1e3) / med("wall_us_per_pass")
        # the largest speedup at which the core still keeps up (ratio == 1)
        break_even = med("sim_ms_per_pass") * 1e3 / med("wall_us_per_pass")
        print(
            f"{c:>11} {med('passes_per_s'):>10.0f} {med('tokens_per_s'):>11.0f} {med('wall_us_per_pass'):>13.1f} "
            f"{med('sim_ms_per_pass'):>12.2f} {med('decode_only_wall_us'):>15.1f} {ratio:>16.2f} {break_even:>13.0f}"
        )
    print(
        f"\nsim/wall @{ns.speedup:g}x = (simulated pass ms / speedup) / core wall time per pass; "
        ">= 1 means the core keeps up with real time at that speedup; break-even x is the speedup where it "
        "stops keeping up."
    )


if __name__ == "__main__":
    main()
