"""Planner benchmark: a bursty Azure LLM trace segment, time-compressed, replayed open-loop against mocker
workers — managed by the planner (``--environment local``) versus static provisioning at the peak and
at the mean. Reports SLA attainment (share of requests meeting both TTFT and ITL targets) and
worker-seconds, and writes a PNG of load, workers and attainment over time.

    python benchmarks/planner_bench.py --out /tmp/planner-bench

Every configuration gets the same requests at the same offsets (prompts are random token ids, so no
prefix caching helps anyone). Mockers run in real time with a small KV cache, so one worker saturates
well below the trace's peak. Worker-seconds integrate the number of registered workers over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QWEN = SHARED / "models" / "Qwen3-0.6B"
TRACES = {"conv": SHARED / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv",
          "code": SHARED / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"}
sys.path.insert(0, str(REPO / "src"))

from dynamo.planner.warmup import read_trace  # noqa: E402


@dataclass
class Req:
    at: float  # seconds after the run starts
    isl: int
    osl: int


@dataclass
class Result:
    at: float
    ttft: float = math.nan
    itl: float = math.nan
    tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    name: str
    results: list[Result] = field(default_factory=list)
    workers: list[tuple[float, int]] = field(default_factory=list)  # (t, registered workers)
    duration: float = 0.0

    def attainment(self, ttft: float, itl: float) -> float:
        ok = sum(1 for r in self.results if r.error is None and r.ttft <= ttft and (r.itl <= itl or r.tokens < 2))
        return ok / len(self.results) if self.results else 0.0

    def worker_seconds(self) -> float:
        total = 0.0
        for (t0, n), (t1, _) in zip(self.workers, self.workers[1:], strict=False):
            total += n * (t1 - t0)
        return total


def pick_segment(kind: str, window_s: float, bucket_s: float = 10.0) -> list[tuple[float, int, int]]:
    """The ``window_s`` of the trace whose busiest ``bucket_s`` is the largest multiple of its mean."""
    reqs = read_trace(TRACES[kind])
    n = int(reqs[-1][0] // bucket_s) + 1
    counts = [0] * n
    for t, _, _ in reqs:
        counts[int(t // bucket_s)] += 1
    per = int(window_s // bucket_s)
    best, best_score = 0, -1.0
    for s in range(0, n - per):
        window = counts[s:s + per]
        mean = sum(window) / per
        score = max(window) / mean if mean else 0
        if score > best_score:
            best, best_score = s, score
    start, end = best * bucket_s, best * bucket_s + window_s
    return [(t - start, i, o) for t, i, o in reqs if start <= t < end]


def schedule(segment: list[tuple[float, int, int]], compress: float, max_isl: int, max_osl: int,
             sample: float = 1.0) -> list[Req]:
    """Arrival offsets divided by ``compress``; a seeded ``sample`` fraction of the requests kept (thinning
    keeps the shape of the bursts while lowering the rate to what this host can drive)."""
    rng = random.Random(42)
    return [Req(t / compress, max(16, min(i, max_isl)), max(2, min(o, max_osl))) for t, i, o in segment
            if sample >= 1.0 or rng.random() < sample]


async def send(http: httpx.AsyncClient, url: str, t0: float, req: Req, rng: random.Random, out: list[Result]) -> None:
    await asyncio.sleep(max(0.0, t0 + req.at - time.perf_counter()))
    prompt = [rng.randrange(100, 100_000) for _ in range(req.isl)]
    body = {"model": "Qwen3-0.6B", "prompt": prompt, "max_tokens": req.osl, "stream": True,
            "stream_options": {"include_usage": True}}
    res = Result(req.at)
    start = time.perf_counter()
    first = last = None
    try:
        async with http.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        res.tokens = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
    except (httpx.HTTPError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    if first is not None:
        res.ttft = first - start
        res.itl = (last - first) / (res.tokens - 1) if res.tokens > 1 else 0.0
    elif res.error is None:
        res.error = "no tokens"
    out.append(res)


class Cluster:
    """A frontend plus either N static mockers or a planner spawning them, on a private file store."""

    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        self.args = args
        self.logdir = logdir
        self.root = Path(tempfile.mkdtemp(prefix="planner-bench-"))
        self.port = random.randint(20000, 30000)
        self.env = {**os.environ, "DYN_FILE_KV": str(self.root / "kv"), "DYN_STORE_KV": "file",
                    "DYN_EVENT_PLANE": "zmq", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"),
                    "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "60"}
        self.env.pop("DYN_NAMESPACE", None)
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker_cmd(self) -> list[str]:
        a = self.args
        return [sys.executable, "-m", "dynamo.mocker", "--model-path", str(QWEN), "--speedup-ratio", str(a.speedup),
                "--block-size", "64", "--num-gpu-blocks-override", str(a.kv_blocks), "--max-num-seqs", str(a.max_seqs)]

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logdir / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start_frontend(self) -> None:
        self.spawn("frontend", [sys.executable, "-m", "dynamo.frontend", *frontend_args(self.args, self.port)])

    def start_static(self, n: int) -> None:
        for i in range(n):
            self.spawn(f"worker{i}", self.worker_cmd())

    def start_planner(self) -> None:
        self.spawn("planner", [sys.executable, *planner_args(self.args, self.worker_cmd(), self.port)])

    def stop(self) -> None:
        # The planner first (it drains its own workers), then the rest.
        for p in self.procs[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in self.procs[::-1]:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def frontend_args(a: argparse.Namespace, port: int) -> list[str]:
    """The frontend's command line (after ``-m dynamo.frontend``); the same for every configuration."""
    out = ["--http-host", "127.0.0.1", "--http-port", str(port), "--router-mode", a.router_mode]
    if a.router_mode == "kv":
        out += ["--router-queue-threshold", str(a.router_queue_threshold)]
    return out


def planner_args(a: argparse.Namespace, worker_cmd: list[str], port: int) -> list[str]:
    """The planner's full command line (after the interpreter): every knob the benchmark relies on is
    spelled out rather than left to a default."""
    return ["-m", "dynamo.planner", "--environment", "local", "--backend", "mocker", "--mode", "agg",
            "--local-worker-cmd", " ".join(worker_cmd), "--no-enable-throughput-scaling",
            "--enable-loadbased-scaling", "--loadbased-adjustment-interval", str(a.planner_interval),
            "--ttft", str(a.ttft_ms), "--itl", str(a.itl_ms), "--isl", str(a.max_isl // 2),
            "--max-num-batched-tokens", "8192", "--max-gpu-budget", str(a.max_workers), "--min-endpoint", str(a.planner_min),
            "--loadbased-sensitivity", str(a.sensitivity), "--load-predictor", "constant",
            "--loadbased-max-step-up", str(a.max_step_up), "--loadbased-scale-down-window", str(a.down_window),
            "--metrics-source", "frontend", "--frontend-metrics-url", f"http://127.0.0.1:{port}/metrics"]


async def run_config(name: str, args: argparse.Namespace, reqs: list[Req], static: int | None,
                     logdir: Path) -> Run:
    from dynamo.runtime import DistributedRuntime

    cluster = Cluster(args, logdir / name)
    (logdir / name).mkdir(parents=True, exist_ok=True)
    os.environ["DYN_FILE_KV"] = cluster.env["DYN_FILE_KV"]
    rt = await DistributedRuntime.create("file")
    run = Run(name)
    try:
        cluster.start_frontend()
        if static is None:
            cluster.start_planner()
        else:
            cluster.start_static(static)
        client = await rt.endpoint("dyn://dynamo.backend.generate").client()
        await client.wait_for_instances(120, count=static or 1)
        async with httpx.AsyncClient(timeout=5) as probe:
            for _ in range(600):
                try:
                    if (await probe.get(f"http://127.0.0.1:{cluster.port}/v1/models")).json()["data"]:
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.1)
        rng = random.Random(1234)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
            t0 = time.perf_counter()
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    run.workers.append((time.perf_counter() - t0, len(client.instance_ids())))
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            url = f"http://127.0.0.1:{cluster.port}"
            await asyncio.gather(*(send(http, url, t0, r, rng, run.results) for r in reqs))
            run.duration = time.perf_counter() - t0
            done.set()
            await sampler
            run.workers.append((run.duration, run.workers[-1][1]))
        await client.close()
    finally:
        await rt.shutdown(grace_period=0)
        cluster.stop()
    return run


def plot(runs: list[Run], reqs: list[Req], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    end = max(r.duration for r in runs)
    bucket = 5.0
    n = int(end // bucket) + 1
    rate = [0] * n
    for r in reqs:
        rate[int(r.at // bucket)] += 1
    xs = [i * bucket for i in range(n)]
    axes[0].step(xs, [c / bucket for c in rate], where="post", color="black")
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].set_title(f"Azure {args.trace} trace segment, {args.compress}x compressed")
    for run in runs:
        axes[1].step([t for t, _ in run.workers], [w for _, w in run.workers], where="post", label=run.name)
        ok = [0] * n
        tot = [0] * n
        for r in run.results:
            k = int(r.at // bucket)
            tot[k] += 1
            ok[k] += r.error is None and r.ttft <= args.ttft_ms / 1000 and (r.itl <= args.itl_ms / 1000 or r.tokens < 2)
        axes[2].plot(xs, [o / t if t else math.nan for o, t in zip(ok, tot, strict=True)], label=run.name)
    axes[1].set_ylabel("workers")
    axes[1].legend()
    axes[2].set_ylabel(f"SLA attainment\n(TTFT ≤ {args.ttft_ms:g} ms, ITL ≤ {args.itl_ms:g} ms)")
    axes[2].set_xlabel("seconds (by arrival)")
    axes[2].set_ylim(0, 1.05)
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def amain(args: argparse.Namespace) -> None:
    out = Path(args.out)
    reqs = schedule(pick_segment(args.trace, args.window), args.compress, args.max_isl, args.max_osl, args.sample)
    span = reqs[-1].at if reqs else 0
    bucket = 5.0
    counts = [0] * (int(span // bucket) + 1)
    for r in reqs:
        counts[int(r.at // bucket)] += 1
    peak, mean = max(counts) / bucket, len(reqs) / max(span, 1e-9)
    mean_workers = max(1, math.ceil(args.max_workers * mean / peak))
    print(f"{len(reqs)} requests over {span:.0f}s: mean {mean:.1f} req/s, peak {peak:.1f} req/s (5 s buckets); "
          f"static peak = {args.max_workers} workers, static mean = {mean_workers}", flush=True)
    configs = [("planner", None), ("static-peak", args.max_workers), ("static-mean", mean_workers)]
    configs += [(f"static-{n}", n) for n in args.also_static if n not in (args.max_workers, mean_workers)]
    runs = []
    for name, static in configs:
        if args.only and name not in args.only:
            continue
        run = await run_config(name, args, reqs, static, out / "logs")
        runs.append(run)
        print(f"{name:12s} attainment {run.attainment(args.ttft_ms / 1000, args.itl_ms / 1000):6.1%}  "
              f"worker-seconds {run.worker_seconds():7.1f}  errors {sum(r.error is not None for r in run.results)}",
              flush=True)
    peak_ws = next((r.worker_seconds() for r in runs if r.name == "static-peak"), math.nan)
    summary = {
        "args": vars(args), "planner_cmd": planner_args(args, ["<worker command>"], 0),
        "frontend_cmd": frontend_args(args, 0), "requests": len(reqs), "mean_rps": mean, "peak_rps": peak,
        "runs": [{"name": r.name, "attainment": r.attainment(args.ttft_ms / 1000, args.itl_ms / 1000),
                  "worker_seconds": r.worker_seconds(), "worker_seconds_vs_peak": r.worker_seconds() / peak_ws,
                  "errors": sum(x.error is not None for x in r.results),
                  "p50_ttft": _pct([x.ttft for x in r.results], 50), "p99_ttft": _pct([x.ttft for x in r.results], 99),
                  "p50_itl": _pct([x.itl for x in r.results], 50), "p99_itl": _pct([x.itl for x in r.results], 99),
                  "workers": r.workers, "results": [asdict(x) for x in r.results]} for r in runs],
    }
    (out / "planner_bench.json").write_text(json.dumps(summary))
    print("\n| config | SLA attainment | worker-seconds | vs static peak | p50 / p99 TTFT (ms) | p50 / p99 ITL (ms) |")
    print("|---|---|---|---|---|---|")
    for r in summary["runs"]:
        print(f"| {r['name']} | {r['attainment']:.1%} | {r['worker_seconds']:.0f} | {r['worker_seconds_vs_peak']:.0%} | "
              f"{r['p50_ttft'] * 1000:.0f} / {r['p99_ttft'] * 1000:.0f} | {r['p50_itl'] * 1000:.1f} / "
              f"{r['p99_itl'] * 1000:.1f} |")
    if runs:
        plot(runs, reqs, args, out / "planner_bench.png")
        print(f"\nplot: {out / 'planner_bench.png'}")


def _pct(values: list[float], q: float) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    return vals[min(len(vals) - 1, round(q / 100 * (len(vals) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", choices=sorted(TRACES), default="code")
    p.add_argument("--window", type=float, default=1200.0, help="trace seconds to replay")
    p.add_argument("--compress", type=float, default=8.0, help="time compression of the trace")
    p.add_argument("--sample", type=float, default=0.6, help="fraction of the segment's requests sent")
    p.add_argument("--max-isl", type=int, default=1024)
    p.add_argument("--max-osl", type=int, default=64)
    p.add_argument("--ttft-ms", type=float, default=500.0)
    p.add_argument("--itl-ms", type=float, default=50.0)
    p.add_argument("--max-workers", type=int, default=4, help="static peak provisioning and the planner's cap")
    p.add_argument("--kv-blocks", type=int, default=2048, help="mocker KV blocks of 64 tokens")
    p.add_argument("--max-seqs", type=int, default=256, help="mocker max running sequences")
    p.add_argument("--speedup", type=float, default=1.0, help="mocker --speedup-ratio (1: the mocker's own "
                   "default, real time; below 1 a pass with any prompt work takes longer than the ITL target)")
    p.add_argument("--planner-interval", type=float, default=1.0)
    p.add_argument("--planner-min", type=int, default=2, help="the planner's --min-endpoint")
    p.add_argument("--sensitivity", type=float, default=60.0)
    p.add_argument("--max-step-up", type=int, default=1, help="the planner's --loadbased-max-step-up (1: the reference's ±1 per interval)")
    p.add_argument("--down-window", type=float, default=60.0, help="the planner's --loadbased-scale-down-window (s)")
    p.add_argument("--router-mode", default="kv", choices=["round-robin", "random", "power-of-two", "least-loaded", "kv"],
                   help="the frontend's --router-mode")
    p.add_argument("--router-queue-threshold", default="4.0",
                   help="with --router-mode kv: the frontend's --router-queue-threshold (requests wait in the "
                   "frontend while every worker has more than this x max_num_batched_tokens of prompt work queued; "
                   "'None' disables)")
    p.add_argument("--also-static", type=int, nargs="*", default=[2],
                   help="more static pool sizes to run (named static-N): where between the mean and the peak a "
                   "fixed pool would already meet the targets")
    p.add_argument("--only", nargs="*", help="run only these configs (planner, static-peak, static-mean)")
    p.add_argument("--out", default="planner-bench")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
