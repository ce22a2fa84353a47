"""Replay a Mooncake-format trace (or a synthetic workload) through simulated mocker workers and the
KV router in simulated time — no sockets, no sleeping — and print AIPerf-style latency statistics.

    python -m dynamo.replay ../shared/data/traces/mooncake/conversation_trace.jsonl \\
        --num-workers 16 --router-mode kv_router --report-json report.json
    python -m dynamo.replay --input-tokens 2000 --output-tokens 200 --request-count 500 \\
        --request-rate 20 --num-workers 4 --router-mode kv_router
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from dynamo.common import cli
from dynamo.replay.args import ReplayConfig, parse_config
from dynamo.replay.report import format_table, per_request, summarize
from dynamo.replay.simulation import ReplaySimulation
from dynamo.replay.workload import TraceRequest, parse_mooncake, synthetic
from dynamo.runtime.errors import ConfigError, InvalidArgument


def read_trace(paths: list[str]) -> list[TraceRequest]:
    """Requests of every file, in file order (files concatenated); a bad line names its file."""
    out: list[TraceRequest] = []
    for name in paths:
        path = Path(name)
        try:
            with path.open() as f:
                lines = [ln for ln in f if ln.strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read trace {name}: {exc.strerror or exc}") from None
        try:
            records = [json.loads(ln) for ln in lines]
            out.extend(parse_mooncake(records))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: line {exc.lineno}: not JSON ({exc.msg})") from None
        except InvalidArgument as exc:
            raise ConfigError(f"{name}: {exc}") from None
    if not out:
        raise ConfigError("the trace holds no requests")
    return out


def workload(config: ReplayConfig) -> list[TraceRequest]:
    if config.trace:
        return read_trace(config.trace)
    assert config.input_tokens is not None and config.output_tokens is not None
    assert config.request_count is not None
    return synthetic(config.input_tokens, config.output_tokens, config.request_count,
                     request_rate=config.request_rate, arrival_interval_ms=config.arrival_interval_ms,
                     shared_prefix_ratio=config.shared_prefix_ratio, num_prefix_groups=config.num_prefix_groups,
                     block_size=config.trace_block_size, seed=config.seed)


class ProgressBar:
    """A one-line bar on stderr, redrawn at most every 0.2 s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0
        self._t0 = time.perf_counter()

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and done < self.total:
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        bar = "█" * int(frac * 30)
        sys.stderr.write(f"\rreplay |{bar:<30}| {done}/{self.total} requests  {now - self._t0:.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def run(config: ReplayConfig) -> dict[str, Any]:
    requests = workload(config)
    planner = perf = None
    if config.planner:
        planner = config.planner_config()
        if planner.enable_throughput_scaling:
            from dynamo.planner.perf_interpolation import load_profile

            perf = load_profile(planner.profile_results_dir, planner.prefill_engine_num_gpu,
                                planner.decode_engine_num_gpu)
    try:
        engine = config.engine_args()
        sim = ReplaySimulation(requests, engine_args=engine, num_workers=config.num_workers,
                               router_mode=config.router_mode, router_config=config.router_config(),
                               trace_block_size=config.trace_block_size,
                               arrival_speedup_ratio=config.arrival_speedup_ratio,
                               replay_concurrency=config.replay_concurrency, seed=config.seed,
                               planner=planner, planner_perf=perf,
                               worker_startup_ms=config.worker_startup_delay * 1000.0)
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None
    bar = ProgressBar(len(requests), config.progress)
    # A replay allocates millions of short-lived objects beside a large, long-lived index, and creates
    # no reference cycles while it runs (checked: a collection after a run finds no garbage), so the
    # cycle collector would only re-scan the index over and over (about 20% of the CPU time at the
    # default thresholds). Off for the run.
    enabled = gc.isenabled()
    gc.disable()
    t0 = time.perf_counter()
    try:
        result = sim.run(progress=bar)
    finally:
        if enabled:
            gc.enable()
    wall_ms = (time.perf_counter() - t0) * 1000.0
    bar.close()
    summary = summarize(result, wall_ms, ttft_ms=config.ttft, itl_ms=config.itl)
    print(format_table(summary))
    if config.report_json:
        report = {"summary": summary, "per_request": per_request(result),
                  "workers_timeline": None if result.fleet is None else result.fleet.to_json(),
                  "config": {k: v for k, v in vars(config).items() if not k.startswith("_")}}
        path = Path(config.report_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True) + "\n")
        print(f"report written to {path}")
    return summary


def main(argv: list[str] | None = None) -> None:
    cli.configure_logging(0)
    try:
        run(parse_config(argv))
        # The replay's object graph (a cycle through the workers' event sinks: millions of objects)
        # is garbage now; the process is about to end, so spare the exit-time collection walking and
        # freeing it (about a second on the whole Mooncake trace).
        gc.freeze()
    except ConfigError as exc:
        cli.fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
