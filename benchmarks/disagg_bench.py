"""Disaggregated serving benchmark: do long prompts stop stalling everyone else's tokens?

A fixed mocker fleet (``--workers``, real time: speedup 1) serves an open-loop mix of short chats and
long prompts (ISL ~8k) arriving among them, three ways with the same total worker count:

- ``agg``: every worker aggregated (a long prefill stalls the decode steps of its worker's streams);
- ``disagg``: ``--prefill-workers`` prefill workers + the rest decode workers (bootstrap path);
- ``conditional``: the same split with ``--router-conditional-disagg`` (short, cached prompts prefill
  on the decode worker).

Each mode runs against ours and, with ``--compare ai-dynamo``, against ai-dynamo 1.6.1's mocker and
frontend in the same run (installed into ``benchmarks/.venv-ai-dynamo`` on first use, as serve_bench
does), with identical arrivals (same seed). Prints TTFT and ITL percentiles per request class and
goodput under a TTFT + ITL SLA, ratios ours/theirs, and writes a plot (``--plot``).

    python benchmarks/disagg_bench.py --duration 60
    python benchmarks/disagg_bench.py --compare ai-dynamo --plot disagg.png --json disagg.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import RequestRecord, _StreamingConnection, percentile
from serve_bench import (
    AI_DYNAMO_VENV,
    DEFAULT_MODEL_DIR,
    DeploymentError,
    PromptSource,
    System,
    _signal_group,
    clean_env,
    ensure_ai_dynamo,
    free_port,
    ours,
)

MODES = ("agg", "disagg", "conditional")


@dataclass
class Arrival:
    at: float  # seconds after the start
    kind: str  # "short" | "long"
    body: bytes


def workload(args: argparse.Namespace) -> list[Arrival]:
    """Poisson arrivals of both classes over warm-up + duration, bodies drawn in advance (same seed,
    same bytes for every system and mode)."""
    rng = random.Random(args.seed)
    short = PromptSource(args.model_path, args.short_isl, args.short_osl, args.model_path.name, seed=args.seed)
    long = PromptSource(args.model_path, args.long_isl, args.long_osl, args.model_path.name, seed=args.seed + 1,
                        pool=16)
    out: list[Arrival] = []
    span = args.warmup + args.duration
    for kind, rate, src in (("short", args.short_rate, short), ("long", args.long_rate, long)):
        t = rng.expovariate(rate)
        while t < span:
            out.append(Arrival(t, kind, next(src)))
            t += rng.expovariate(rate)
    out.sort(key=lambda a: a.at)
    return out


@dataclass
class Fleet:
    system: System
    mode: str
    args: argparse.Namespace
    port: int = 0
    tmp: Path = field(default_factory=Path)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __enter__(self) -> Fleet:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"disagg-bench-{self.system.name}-{self.mode}-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            print(f"[{self.system.name}] logs kept in {self.tmp}", file=sys.stderr)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.args.keep_logs or (exc and exc[0] is not None):
            print(f"[{self.system.name}/{self.mode}] logs kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(self, role: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.tmp / f"{role}.log", "wb") as out:
            self.procs[role] = subprocess.Popen([str(self.system.python), "-m", *argv], env=env, cwd=self.tmp,
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def _start(self) -> None:
        a = self.args
        home, kv = self.tmp / "home", self.tmp / "kv"
        home.mkdir()
        kv.mkdir()
        env = clean_env(self.system.python.parent, home, kv)
        name = a.model_path.name
        common = ["dynamo.mocker", "--model-path", str(a.model_path), "--model-name", name, "--speedup-ratio", "1",
                  "--block-size", str(a.block_size), "--kv-transfer-bandwidth", str(a.kv_transfer_bandwidth)]
        if self.mode == "agg":
            self._spawn("workers", [*common, "--num-workers", str(a.workers)], env)
        else:
            p = a.prefill_workers
            ports = ",".join(str(free_port()) for _ in range(p))
            self._spawn("prefill", [*common, "--disaggregation-mode", "prefill", "--num-workers", str(p),
                                    "--bootstrap-ports", ports], env)
            self._spawn("decode", [*common, "--disaggregation-mode", "decode", "--num-workers",
                                   str(a.workers - p)], env)
        self.port = free_port()
        fe = ["dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port), "--router-mode", "kv"]
        if self.mode == "conditional":
            fe.append("--router-conditional-disagg")
        self._spawn("frontend", fe, env)
        self._wait_ready(name)

    def _wait_ready(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            for role, p in self.procs.items():
                if p.poll() is not None:
                    log = (self.tmp / f"{role}.log").read_text(errors="replace")[-3000:]
                    raise DeploymentError(f"[{self.system.name}] {role} exited ({p.returncode}):\n{log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if any(m.get("id") == name for m in json.load(resp).get("data", [])):
                        # Prefill workers register on their own; neither frontend says when it has seen
                        # them all, so give discovery a moment before the first request.
                        time.sleep(3.0)
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        raise DeploymentError(f"[{self.system.name}] {name!r} not served after {timeout:.0f}s (logs: {self.tmp})")

    def stop(self) -> None:
        for p in self.procs.values():
            _signal_group(p, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(5)


async def replay(port: int, arrivals: list[Arrival], timeout_s: float) -> list[tuple[Arrival, RequestRecord]]:
    """Send every arrival at its time (open loop), one connection per request."""
    loop = asyncio.get_running_loop()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: ").encode()
    t0 = time.perf_counter()
    done: list[tuple[Arrival, RequestRecord]] = []

    async def one(a: Arrival) -> None:
        await asyncio.sleep(max(0.0, t0 + a.at - time.perf_counter()))
        rec = RequestRecord(start=time.perf_counter())
        conn: _StreamingConnection | None = None
        try:
            _, conn = await loop.create_connection(_StreamingConnection, "127.0.0.1", port)
            await asyncio.wait_for(conn.request(head, a.body, rec), timeout_s)
        except Exception as exc:  # every failure is one failed request in the table
            rec.error = rec.error or f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                conn.close()
        done.append((a, rec))

    await asyncio.gather(*(one(a) for a in arrivals))
    return done


def summarize(system: str, mode: str, results: list[tuple[Arrival, RequestRecord]], args: argparse.Namespace,
              ) -> dict[str, Any]:
    window = [(a, r) for a, r in results if a.at >= args.warmup]
    ok = [(a, r) for a, r in window if r.error is None and r.token_times]
    row: dict[str, Any] = {"system": system, "mode": mode, "requests": len(window),
                           "errors": len(window) - len(ok)}
    errs = [r.error for _, r in window if r.error]
    row["first_error"] = errs[0] if errs else None
    good = 0
    for kind in ("short", "long", "all"):
        recs = [r for a, r in ok if kind == "all" or a.kind == kind]
        ttft = [(r.token_times[0] - r.start) * 1e3 for r in recs]
        itl = [(b - x) * 1e3 for r in recs for x, b in zip(r.token_times, r.token_times[1:], strict=False)]
        row[f"{kind}_ttft_p50"] = percentile(ttft, 50)
        row[f"{kind}_ttft_p99"] = percentile(ttft, 99)
        row[f"{kind}_itl_p50"] = percentile(itl, 50)
        row[f"{kind}_itl_p99"] = percentile(itl, 99)
        row[f"{kind}_itl_samples"] = itl if args.plot else None
    for _, r in ok:
        gaps = [(b - x) * 1e3 for x, b in zip(r.token_times, r.token_times[1:], strict=False)]
        if (r.token_times[0] - r.start) * 1e3 <= args.sla_ttft_ms and (not gaps or max(gaps) <= args.sla_itl_ms):
            good += 1
    row["goodput_req_s"] = good / args.duration
    row["goodput_pct"] = 100.0 * good / len(window) if window else float("nan")
    return row


def run_mode(system: System, mode: str, arrivals: list[Arrival], args: argparse.Namespace) -> dict[str, Any]:
    print(f"[{system.name}] {mode}: starting {args.workers} workers ...", flush=True)
    with Fleet(system, mode, args) as fleet:
        results = asyncio.run(replay(fleet.port, arrivals, args.timeout))
        dead = [r for r, p in fleet.procs.items() if p.poll() is not None]
        if dead:
            raise DeploymentError(f"[{system.name}/{mode}] {', '.join(dead)} died during the run (logs: {fleet.tmp})")
    row = summarize(system.name, mode, results, args)
    print(f"  [{system.name}] {mode}: {row['requests']} requests, {row['errors']} errors, "
          f"ITL p99 {row['all_itl_p99']:.1f} ms, TTFT p99 {row['all_ttft_p99']:.0f} ms", flush=True)
    if row["first_error"]:
        print(f"    first error: {row['first_error']}", flush=True)
    return row


COLUMNS = [("system", "system", "{}"), ("mode", "mode", "{}"), ("reqs", "requests", "{:d}"),
           ("err", "errors", "{:d}"),
           ("short TTFT p50/p99", ("short_ttft_p50", "short_ttft_p99"), "{:.0f}/{:.0f}"),
           ("long TTFT p50/p99", ("long_ttft_p50", "long_ttft_p99"), "{:.0f}/{:.0f}"),
           ("ITL p50/p99 (all)", ("all_itl_p50", "all_itl_p99"), "{:.1f}/{:.1f}"),
           ("short ITL p99", "short_itl_p99", "{:.1f}"),
           ("goodput req/s (%)", ("goodput_req_s", "goodput_pct"), "{:.2f} ({:.0f}%)")]


def cell(row: dict[str, Any], key: Any, fmt: str) -> str:
    vals = [row[k] for k in key] if isinstance(key, tuple) else [row[key]]
    return fmt.format(*vals)


def print_table(rows: list[dict[str, Any]]) -> None:
    table = [[c[0] for c in COLUMNS]] + [[cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    for i, line in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["system"], r["mode"]): r for r in rows}
    agg = by.get(("ours", "agg"))
    for mode in ("disagg", "conditional"):
        r = by.get(("ours", mode))
        if agg and r:
            print(f"ours {mode}/agg: ITL p99 {r['all_itl_p99'] / agg['all_itl_p99']:.2f}x, "
                  f"short ITL p99 {r['short_itl_p99'] / agg['short_itl_p99']:.2f}x, "
                  f"long TTFT p50 {r['long_ttft_p50'] / agg['long_ttft_p50']:.2f}x")
    for mode in MODES:
        o, t = by.get(("ours", mode)), by.get(("ai-dynamo", mode))
        if o and t:
            print(f"{mode} ours/ai-dynamo: TTFT p50 {o['all_ttft_p50'] / t['all_ttft_p50']:.2f}x, "
                  f"TTFT p99 {o['all_ttft_p99'] / t['all_ttft_p99']:.2f}x, "
                  f"ITL p50 {o['all_itl_p50'] / t['all_itl_p50']:.2f}x, ITL p99 {o['all_itl_p99'] / t['all_itl_p99']:.2f}x")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        label = f"{r['system']} {r['mode']}"
        style = "-" if r["system"] == "ours" else "--"
        for i, kind in enumerate(("short", "long")):
            samples = sorted(r.get(f"{kind}_itl_samples") or [])
            if samples:
                ax[i].plot(samples, [k / len(samples) for k in range(1, len(samples) + 1)], style, label=label)
    for i, kind in enumerate(("short chats", "long prompts")):
        ax[i].set_xscale("log")
        ax[i].set_xlabel("inter-token latency (ms)")
        ax[i].set_ylabel("fraction of tokens")
        ax[i].set_title(f"ITL CDF, {kind}")
        ax[i].grid(True, alpha=0.3)
        ax[i].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--workers", type=int, default=4, help="total workers in every mode")
    p.add_argument("--prefill-workers", type=int, default=1, help="of --workers, prefill workers (disagg modes)")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--kv-transfer-bandwidth", type=float, default=64.0, help="GB/s, both systems")
    p.add_argument("--short-rate", type=float, default=6.0, help="short chats per second (Poisson)")
    p.add_argument("--short-isl", type=int, default=200)
    p.add_argument("--short-osl", type=int, default=150)
    p.add_argument("--long-rate", type=float, default=4.0, help="long prompts per second (Poisson)")
    p.add_argument("--long-isl", type=int, default=8000)
    p.add_argument("--long-osl", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (after --warmup)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--sla-ttft-ms", type=float, default=2000.0)
    p.add_argument("--sla-itl-ms", type=float, default=100.0, help="per request: its largest inter-token gap")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of agg,disagg,conditional")
    p.add_argument("--compare", choices=["ai-dynamo"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write an ITL CDF plot (PNG)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes must be a subset of {','.join(MODES)}")
    if not 0 < args.prefill_workers < args.workers:
        p.error("--prefill-workers must be between 1 and --workers - 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arrivals = workload(args)
    n_long = sum(a.kind == "long" for a in arrivals)
    print(f"workload: {len(arrivals) - n_long} short chats (ISL ~{args.short_isl}, OSL {args.short_osl}) and "
          f"{n_long} long prompts (ISL ~{args.long_isl}, OSL {args.long_osl}) over {args.warmup + args.duration:.0f}s; "
          f"{args.workers} workers ({args.prefill_workers} prefill in the disagg modes)", flush=True)
    systems = [ours()]
    if args.compare == "ai-dynamo":
        systems.append(ensure_ai_dynamo(AI_DYNAMO_VENV))
    rows = [run_mode(s, m, arrivals, args) for m in args.modes for s in systems]
    print()
    print_table(rows)
    print()
    print_ratios(rows)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if not k.endswith("_samples")} for r in rows],
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
