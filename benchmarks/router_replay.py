"""Replay a Mooncake conversation trace through the frontend onto mocker workers, once per router mode.

The trace gives, per request, an arrival time, prompt and output lengths, and ``hash_ids`` (one per
512-token prompt block; equal ids = reusable prefix). We pick whole conversations until ``--requests``
requests (so turns that reuse each other's prefixes stay together), squeeze their hour of arrivals
into ``--duration`` seconds, and turn each request into a token-id prompt: every hash id maps to a fixed
pseudo-random block of ``512 / --isl-scale`` token ids, so shared ids become shared token prefixes, cut
to ``input_length / --isl-scale`` tokens. Requests go to ``/v1/completions`` as token arrays with
``max_tokens = output_length / --osl-scale``, ``ignore_eos`` and streaming, open loop at their scaled
arrival times.

Each mode (``--modes kv,round-robin,random``) gets a fresh deployment — 4 mocker workers with a small
KV cache (``--kv-blocks`` per worker, so a worker cannot hold everyone's history and routing decides the
hit rate) and a frontend with that ``--router-mode`` — run one after the other on the same workload.
``--compare ai-dynamo`` adds ai-dynamo 1.6.1's kv mode with its own mockers, same flags, same workload.

    python benchmarks/router_replay.py                      # ours: kv, round-robin, random (~4 min)
    python benchmarks/router_replay.py --compare ai-dynamo --json out.json
    python benchmarks/router_replay.py --modes kv --frontend-arg=--router-temperature=0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
from serve_bench import (
    AI_DYNAMO_VENV,
    DEFAULT_MODEL_DIR,
    Deployment,
    DeploymentError,
    System,
    clean_env,
    ensure_ai_dynamo,
    free_port,
    ours,
    process_cpu_seconds,
)
from traces import (
    TRACE_BLOCK_TOKENS,
    TraceRequest,
    load_trace,
    oracle_hit_rate,
    sample_conversations,
    seen_block_fraction,
)

# loadgen spots streamed tokens by the "content" key of chat deltas; completions stream "text". This
# process only ever drives completions, so retargeting the module's marker is the whole adaptation.
loadgen._TOKEN_MARK = b'"text":"'

TOKEN_ID_RANGE = (1000, 150_000)  # ordinary Qwen3 vocabulary ids, clear of the special tokens
ROUTING_HEADER = b"\r\nx-dynamo-routing:"


# -- workload -------------------------------------------------------------------------------------

@dataclass(slots=True)
class ReplayItem:
    offset_s: float  # scaled arrival time since the start of the replay
    body: bytes
    prompt_tokens: int
    max_tokens: int


@dataclass
class Workload:
    items: list[ReplayItem]
    requests: list[TraceRequest]
    time_scale: float  # trace seconds per replay second
    tokens_per_id: int
    oracle_hit: float
    seen_ids: float

    @property
    def prompt_tokens(self) -> int:
        return sum(i.prompt_tokens for i in self.items)


def id_tokens(hash_id: int, n: int, seed: int) -> list[int]:
    """The token ids a trace hash id stands for: fixed per (seed, id), so equal ids are equal blocks."""
    return np.random.default_rng([seed, hash_id]).integers(*TOKEN_ID_RANGE, size=n).tolist()  # type: ignore[no-any-return]


def build_workload(args: argparse.Namespace, model_name: str) -> Workload:
    reqs = sample_conversations(load_trace(args.trace), args.requests, seed=args.seed)
    tokens_per_id = TRACE_BLOCK_TOKENS // args.isl_scale
    t0 = reqs[0].timestamp_ms
    span_s = max(1e-3, (reqs[-1].timestamp_ms - t0) / 1000)
    scale = span_s / args.duration
    blocks: dict[int, list[int]] = {}
    items: list[ReplayItem] = []
    head = b'{"model":' + json.dumps(model_name).encode() + b',"prompt":'
    for r in reqs:
        n = max(1, round(r.input_length / args.isl_scale))
        tokens: list[int] = []
        for h in r.hash_ids:
            if len(tokens) >= n:
                break
            blk = blocks.get(h)
            if blk is None:
                blk = blocks[h] = id_tokens(h, tokens_per_id, args.seed)
            tokens.extend(blk)
        del tokens[n:]
        max_tokens = max(1, round(r.output_length / args.osl_scale))
        body = b"".join((head, json.dumps(tokens, separators=(",", ":")).encode(),
                         f',"max_tokens":{max_tokens},"ignore_eos":true,"stream":true,'
                         '"stream_options":{"include_usage":true}}'.encode()))
        items.append(ReplayItem((r.timestamp_ms - t0) / 1000 / scale, body, len(tokens), max_tokens))
    oracle = oracle_hit_rate(reqs, [i.prompt_tokens for i in items], tokens_per_id, args.block_size)
    return Workload(items, reqs, scale, tokens_per_id, oracle, seen_block_fraction(reqs))


# -- client ---------------------------------------------------------------------------------------

class _RoutedConnection(loadgen._StreamingConnection):
    """loadgen's streaming connection, also keeping the router's decision header and cached tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.routing: bytes | None = None
        self.cached_tokens: int | None = None

    def _parse(self, now: float) -> None:
        if self._in_headers:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buf[:end])
                at = head.lower().find(ROUTING_HEADER)
                if at >= 0:
                    start = at + len(ROUTING_HEADER)
                    stop = head.find(b"\r\n", start)
                    self.routing = head[start: stop if stop >= 0 else len(head)].strip()
        super()._parse(now)

    def _usage(self, payload: bytes, rec: loadgen.RequestRecord) -> None:  # type: ignore[override]
        super()._usage(payload, rec)
        try:
            details = (json.loads(payload).get("usage") or {}).get("prompt_tokens_details") or {}
        except ValueError:
            return
        if details.get("cached_tokens") is not None:
            self.cached_tokens = int(details["cached_tokens"])


@dataclass(slots=True)
class Outcome:
    index: int
    scheduled: float
    record: loadgen.RequestRecord
    routing: dict[str, Any] | None = None
    cached_tokens: int | None = None


async def replay(port: int, workload: Workload, timeout_s: float) -> list[Outcome]:
    """Send every item at its scaled arrival time (open loop), each on an idle keep-alive connection
    or a new one; returns one outcome per item, in trace order."""
    loop = asyncio.get_running_loop()
    host = "127.0.0.1"
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: ").encode()
    idle: list[_RoutedConnection] = []
    outcomes: list[Outcome | None] = [None] * len(workload.items)

    async def one(i: int, item: ReplayItem, scheduled: float) -> None:
        conn = idle.pop() if idle else None
        if conn is None or not conn.reusable:
            _, conn = await loop.create_connection(_RoutedConnection, host, port)
        conn.routing, conn.cached_tokens = None, None
        rec = loadgen.RequestRecord(start=time.perf_counter())
        try:
            await asyncio.wait_for(conn.request(head, item.body, rec), timeout_s)
        except (loadgen._ResponseError, OSError, TimeoutError) as e:
            rec.error = rec.error or f"{type(e).__name__}: {e}"
            conn.close()
        routing = None
        if conn.routing:
            try:
                routing = json.loads(conn.routing)
            except ValueError:
                pass
        outcomes[i] = Outcome(i, scheduled, rec, routing, conn.cached_tokens)
        if rec.error is None and conn.reusable:
            idle.append(conn)
        else:
            conn.close()

    tasks = []
    t0 = time.perf_counter() + 0.1
    try:
        for i, item in enumerate(workload.items):
            due = t0 + item.offset_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, item, due)))
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        for c in idle:
            c.close()
    return [o for o in outcomes if o is not None]


# -- deployments ----------------------------------------------------------------------------------

@dataclass
class ReplayDeployment(Deployment):
    """serve_bench's deployment with the replay's mocker and frontend flags."""

    mocker_args: list[str] = field(default_factory=list)
    frontend_args: list[str] = field(default_factory=list)

    def _start(self) -> None:
        home, kv = self.tmp / "home", self.tmp / "kv"
        home.mkdir()
        kv.mkdir()
        env = clean_env(self.system.python.parent, home, kv)
        self._check_import(env)
        self.port = free_port()
        name = self.model_dir.name
        self._spawn("mocker", ["dynamo.mocker", "--model-path", str(self.model_dir), "--model-name", name,
                               "--num-workers", str(self.workers), *self.mocker_args], env)
        self._spawn("frontend", ["dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
                                 "--router-mode", self.router_mode, *self.frontend_args], env)
        self._wait_ready(name, timeout=120.0)


def scrape_metrics(port: int) -> dict[str, float]:
    """Sum of every sample of each metric family (labels dropped) from the frontend's /metrics."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def metric(metrics: dict[str, float], suffix: str) -> float | None:
    """The one metric whose name ends with ``suffix`` (prefixes differ between implementations)."""
    hits = [v for k, v in metrics.items() if k.endswith(suffix)]
    return sum(hits) if hits else None


@dataclass
class RunResult:
    label: str
    outcomes: list[Outcome]
    wall_s: float
    metrics: dict[str, float]
    frontend_cpu_s: float
    mocker_cpu_s: float
    workers_expected: int
    summary: dict[str, Any] = field(default_factory=dict)


def run_mode(system: System, mode: str, workload: Workload, args: argparse.Namespace) -> RunResult:
    label = f"{system.name}:{mode}"
    print(f"[{label}] starting mocker x{args.workers} + frontend ...", flush=True)
    mocker_args = ["--block-size", str(args.block_size), "--speedup-ratio", str(args.speedup_ratio),
                   "--num-gpu-blocks-override", str(args.kv_blocks)]
    frontend_args = list(args.frontend_arg) if system.name == "ours" else []
    with ReplayDeployment(system, args.model_path, args.workers, mode, keep_logs=args.keep_logs,
                          mocker_args=mocker_args, frontend_args=frontend_args) as dep:
        time.sleep(args.settle)  # the model is listed once one worker registered: let the others appear
        fe, wk = dep.procs["frontend"].pid, dep.procs["mocker"].pid
        cpu0 = (process_cpu_seconds(fe), process_cpu_seconds(wk))
        t0 = time.perf_counter()
        try:
            outcomes = _run_loop(replay(dep.port, workload, args.timeout))
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        wall = time.perf_counter() - t0
        cpu1 = (process_cpu_seconds(fe), process_cpu_seconds(wk))
        if not dep.alive():
            dead = [r for r, p in dep.procs.items() if p.poll() is not None]
            raise DeploymentError(f"[{label}] {', '.join(dead)} died during the run\n"
                                  + "\n".join(dep.log_tail(r) for r in dead))
        metrics = scrape_metrics(dep.port)
    res = RunResult(label, outcomes, wall, metrics, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], args.workers)
    res.summary = summarize(res, workload, args.block_size)
    s = res.summary
    print(f"[{label}] {s['completed']} done, {s['errors']} errors in {wall:.0f}s; TTFT p50 {s['ttft_p50_ms']:.1f} ms "
          f"p99 {s['ttft_p99_ms']:.1f} ms", flush=True)
    if s["first_error"]:
        print(f"    first error: {s['first_error']}", flush=True)
    return res


def _run_loop(coro: Any) -> list[Outcome]:
    async def main() -> list[Outcome]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await coro  # type: ignore[no-any-return]

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())  # type: ignore[no-any-return]


# -- results --------------------------------------------------------------------------------------

def summarize(res: RunResult, workload: Workload, block_size: int) -> dict[str, Any]:
    ok = [o for o in res.outcomes if o.record.error is None and o.record.token_times]
    errors = [o.record.error for o in res.outcomes if o.record.error is not None]
    ttft = [(o.record.token_times[0] - o.record.start) * 1e3 for o in ok]
    itl = [(b - a) * 1e3 for o in ok for a, b in zip(o.record.token_times, o.record.token_times[1:], strict=False)]
    first = min((o.record.start for o in ok), default=0.0)
    last = max((o.record.end for o in ok), default=0.0)
    span = last - first
    out_tokens = sum(o.record.output_tokens for o in ok)
    lag = [max(0.0, o.record.start - o.scheduled) * 1e3 for o in res.outcomes]
    # the router's own view: overlap it predicted for the chosen worker, in whole blocks
    routed = [(o, o.routing) for o in ok if o.routing is not None]
    predicted = None
    per_worker: dict[int, int] = {}
    if routed:
        cached = sum(int(r.get("overlap_blocks", 0)) * block_size for _, r in routed)
        predicted = cached / sum(workload.items[o.index].prompt_tokens for o, _ in routed)
        for _, r in routed:
            per_worker[int(r["worker_id"])] = per_worker.get(int(r["worker_id"]), 0) + 1
    # ours: router_{cached,input}_tokens_total (kv mode only); ai-dynamo 1.6.1 names the first
    # router_kv_selected_cached_prefix_tokens_total and has no router-side input counter
    m_cached = metric(res.metrics, "router_cached_tokens_total")
    if m_cached is None:
        m_cached = metric(res.metrics, "router_kv_selected_cached_prefix_tokens_total")
    m_input = metric(res.metrics, "router_input_tokens_total")
    if m_input is None and m_cached is not None:
        m_input = metric(res.metrics, "frontend_input_sequence_tokens_sum")
    route_sum = metric(res.metrics, "router_overhead_total_ms_sum")
    route_n = metric(res.metrics, "router_overhead_total_ms_count")
    achieved_n = [o for o in ok if o.cached_tokens is not None]
    achieved = (sum(o.cached_tokens or 0 for o in achieved_n) / sum(workload.items[o.index].prompt_tokens
                                                                     for o in achieved_n)
                if achieved_n else None)
    share = None
    if per_worker:
        counts = list(per_worker.values()) + [0] * max(0, res.workers_expected - len(per_worker))
        share = max(counts) / max(1, min(counts)) if min(counts) else float("inf")
    return {
        "label": res.label,
        "completed": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": res.wall_s,
        "req_per_s": len(ok) / span if span > 0 else float("nan"),
        "output_tok_per_s": out_tokens / span if span > 0 else float("nan"),
        "ttft_p50_ms": loadgen.percentile(ttft, 50),
        "ttft_p90_ms": loadgen.percentile(ttft, 90),
        "ttft_p99_ms": loadgen.percentile(ttft, 99),
        "itl_p50_ms": loadgen.percentile(itl, 50),
        "itl_p99_ms": loadgen.percentile(itl, 99),
        "predicted_hit": predicted,
        "metrics_hit": m_cached / m_input if m_cached is not None and m_input else None,
        "achieved_hit": achieved,
        "worker_imbalance": share,
        "route_ms": route_sum / route_n if route_sum is not None and route_n else None,
        "send_lag_p99_ms": loadgen.percentile(lag, 99),
        "frontend_cpu_pct": res.frontend_cpu_s / res.wall_s * 100,
        "mocker_cpu_pct": res.mocker_cpu_s / res.wall_s * 100,
        "ttft_ms": ttft,
    }


COLUMNS = [
    ("run", "label", "{}"),
    ("done", "completed", "{:d}"),
    ("err", "errors", "{:d}"),
    ("req/s", "req_per_s", "{:.1f}"),
    ("tok/s", "output_tok_per_s", "{:.0f}"),
    ("TTFT p50", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p90", "ttft_p90_ms", "{:.1f}"),
    ("TTFT p99", "ttft_p99_ms", "{:.1f}"),
    ("ITL p50", "itl_p50_ms", "{:.1f}"),
    ("hit hdr", "predicted_hit", "{:.1%}"),
    ("hit /metrics", "metrics_hit", "{:.1%}"),
    ("hit usage", "achieved_hit", "{:.1%}"),
    ("max/min wk", "worker_imbalance", "{:.2f}"),
    ("route ms", "route_ms", "{:.3f}"),
    ("lag p99", "send_lag_p99_ms", "{:.1f}"),
    ("FE cpu%", "frontend_cpu_pct", "{:.0f}"),
    ("mock cpu%", "mocker_cpu_pct", "{:.0f}"),
]


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[h for h, _, _ in COLUMNS]] + [[_fmt(f, r[k]) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    print("\n(times in ms; hit = cached prompt tokens / prompt tokens: 'hdr' from the x-dynamo-routing "
          "header's overlap, '/metrics' from the router's counters, 'usage' as reported by the engine)")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib to get one)")
        return
    fig, (ax_cdf, ax_box) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        xs = sorted(r["ttft_ms"])
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax_cdf.step(xs, ys, where="post", label=f"{r['label']} (p50 {r['ttft_p50_ms']:.0f}, p99 {r['ttft_p99_ms']:.0f})")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("TTFT (ms, log)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8)
    ax_box.boxplot([r["ttft_ms"] or [float("nan")] for r in rows], whis=(1, 99), showfliers=False)
    ax_box.set_xticks(range(1, len(rows) + 1), [r["label"] for r in rows], rotation=15, fontsize=8)
    ax_box.set_ylabel("TTFT (ms), whiskers p1..p99")
    ax_box.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# -- CLI ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="conversation", help="conversation | synthetic | path to a Mooncake JSONL")
    p.add_argument("--requests", type=int, default=900, help="pick whole conversations up to this many requests")
    p.add_argument("--duration", type=float, default=60.0, help="seconds the chosen arrivals are squeezed into")
    p.add_argument("--seed", type=int, default=0, help="conversation choice and token ids")
    p.add_argument("--isl-scale", type=int, default=4,
                   help="divide prompt lengths by this (a 512-token trace block becomes 512/S tokens)")
    p.add_argument("--osl-scale", type=int, default=8, help="divide output lengths by this")
    p.add_argument("--modes", default="kv,round-robin,random",
                   type=lambda s: [m for m in s.split(",") if m], help="our router modes, run in this order")
    p.add_argument("--workers", type=int, default=4, help="mocker --num-workers")
    p.add_argument("--block-size", type=int, default=16, help="mocker --block-size (KV block, tokens)")
    p.add_argument("--kv-blocks", type=int, default=8192, help="mocker --num-gpu-blocks-override, per worker")
    p.add_argument("--speedup-ratio", type=float, default=1.0, help="mocker --speedup-ratio")
    p.add_argument("--frontend-arg", action="append", default=[],
                   help="extra flag for our frontend, e.g. --frontend-arg=--router-temperature=0.5 (repeatable)")
    p.add_argument("--compare", choices=["ai-dynamo"], help="also run ai-dynamo's kv mode on the same workload")
    p.add_argument("--ai-dynamo-venv", type=Path, default=AI_DYNAMO_VENV)
    p.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--settle", type=float, default=2.0, help="seconds between readiness and the first request")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--plot", type=Path, default=Path(tempfile.gettempdir()) / "router_replay_ttft.png",
                   help="PNG of the TTFT distributions")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", type=Path, help="also write the summaries to this file")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if TRACE_BLOCK_TOKENS % args.isl_scale or (TRACE_BLOCK_TOKENS // args.isl_scale) % args.block_size:
        p.error(f"--isl-scale must divide {TRACE_BLOCK_TOKENS} into a multiple of --block-size "
                "(so trace blocks line up with KV blocks)")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    t_build = time.perf_counter()
    wl = build_workload(args, args.model_path.name)
    n = len(wl.items)
    isl = [i.prompt_tokens for i in wl.items]
    osl = [i.max_tokens for i in wl.items]
    print(f"workload: {n} requests from {len({r.conversation for r in wl.requests})} conversations of "
          f"the {args.trace} trace, {wl.requests[-1].timestamp_ms / 1000 - wl.requests[0].timestamp_ms / 1000:.0f}s "
          f"of trace squeezed {wl.time_scale:.0f}x into {args.duration:g}s ({n / args.duration:.1f} req/s); "
          f"prompt tokens mean {sum(isl) / n:.0f} max {max(isl)}, max_tokens mean {sum(osl) / n:.0f}; "
          f"{wl.tokens_per_id} tokens per trace block; built in {time.perf_counter() - t_build:.1f}s")
    print(f"deployment: {args.workers} mocker workers, block size {args.block_size}, {args.kv_blocks} KV blocks "
          f"each ({args.kv_blocks * args.block_size} tokens), speedup {args.speedup_ratio:g}")
    print(f"oracle (one engine, unlimited prefix cache): hit rate {wl.oracle_hit:.1%} of prompt tokens; "
          f"{wl.seen_ids:.1%} of trace blocks were seen earlier", flush=True)
    runs: list[RunResult] = []
    try:
        me = ours()
        for mode in args.modes:
            runs.append(run_mode(me, mode, wl, args))
        if args.compare == "ai-dynamo":
            runs.append(run_mode(ensure_ai_dynamo(args.ai_dynamo_venv), "kv", wl, args))
    except DeploymentError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; all components stopped", file=sys.stderr)
        return 130
    rows = [r.summary for r in runs]
    print_table(rows)
    print(f"oracle hit rate (unlimited cache): {wl.oracle_hit:.1%}")
    if not args.no_plot:
        plot(rows, args.plot, f"Mooncake {args.trace} replay: {n} requests in {args.duration:g}s, "
                              f"{args.workers} workers x {args.kv_blocks} blocks")
    if args.json:
        payload = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "oracle_hit": wl.oracle_hit, "runs": rows}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
