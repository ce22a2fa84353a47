"""What our layer costs in front of a real engine, and what KV routing buys on it.

    python benchmarks/engine_bench.py [--model DIR] [--concurrency 1,4,16] [--duration 20]

Same machine, same model (the tiny random Qwen3 unless --model is given), same engine flags, one run:

  (a) ``vllm serve``: vLLM's own OpenAI server, the baseline;
  (b) ``python -m dynamo.frontend`` + one ``python -m dynamo.vllm`` worker;

both driven by benchmarks/loadgen.py (closed-loop streaming chat, ~128-token prompts, 32-96 output tokens (mean 64),
ignore_eos, temperature 0) at each concurrency; it prints req/s, output tok/s, TTFT p50/p99 and ITL p50 per system and
the ratios (b)/(a). Then

  (c) a prefix-heavy workload on two dynamo.vllm workers with a KV cache too small to hold every shared
      prefix on both: ``--router-mode kv`` vs ``round-robin``, reporting the engine-reported cached
      tokens (usage.prompt_tokens_details.cached_tokens) and TTFT.

On a 2-core machine each engine binds one core for its forward passes and the servers, the client and
the other engine share what is left, so absolute numbers are small and noisy; the ratios of (b) to (a)
in the same run are what this script is for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LevelResult, percentile, run_level

REPO = Path(__file__).resolve().parents[1]
ENGINE_FLAGS = ["--enforce-eager", "--max-model-len", "2048", "--block-size", "32"]
NAME = "bench-model"
WORDS = ("harbour lantern granite meadow copper violet orchard thunder saffron glacier pepper willow "
         "marble falcon ember tundra quartz lagoon cobalt juniper").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


class Procs:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name: str) -> None:
        p = self.procs.pop(name)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")


def wait_ready(port: int, procs: Procs, n_instances: int | None = None, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"]
            if any(m["id"] == NAME for m in models):
                if n_instances is None:
                    return
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                if len(health["instances"]) >= n_instances:
                    return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"port {port} did not serve {NAME} in {timeout}s")


def bodies(seed: int, osl: int) -> Any:
    rng = random.Random(seed)
    while True:
        yield json.dumps({
            # greedy for both: left unset, vllm serve would sample with the model's generation_config
            # defaults (Qwen3: top_k 20, top_p 0.95), a costlier path than our frontend's plain defaults
            # output lengths spread over osl/2..3*osl/2: equal lengths make a closed loop finish in waves,
            # and completions counted in a window then jump by whole waves
            "model": NAME, "max_tokens": rng.randint(osl // 2, osl * 3 // 2), "ignore_eos": True,
            "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text(100, rng)}],
        }).encode()


def summarize(system: str, res: LevelResult) -> dict[str, Any]:
    recs = res.records
    ttft = [(r.token_times[0] - r.start) * 1e3 for r in recs if r.token_times]
    itl = [(b - a) * 1e3 for r in recs for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    w = res.window_s
    return {"system": system, "c": res.concurrency, "done": res.completed, "errors": len(res.errors),
            "req_s": res.completed / w, "tok_s": res.output_tokens / w,
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99), "itl_p50": percentile(itl, 50)}


async def drive(port: int, system: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for c in args.concurrency:
        res = await run_level("127.0.0.1", port, bodies(c, args.osl), c, warmup_s=args.warmup,
                              duration_s=args.duration)
        rows.append(summarize(system, res))
        print(f"  {system} c={c}: {rows[-1]['req_s']:.2f} req/s, TTFT p50 {rows[-1]['ttft_p50']:.1f} ms"
              + (f", {len(res.errors)} errors (first: {res.errors[0]})" if res.errors else ""), flush=True)
    return rows


def engine_env(core: int | None = None) -> dict[str, str]:
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    if core is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
    return env


def run_vllm_serve(model: str, procs: Procs, args: argparse.Namespace) -> list[dict[str, Any]]:
    port = free_port()
    # ``vllm serve`` itself; the ``vllm`` console script looks up the distribution "vllm", which the
    # CPU build is not named, so run its OpenAI server module directly
    procs.start("vllm-serve", [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                               "--port", str(port), "--host", "127.0.0.1", "--served-model-name", NAME,
                               *ENGINE_FLAGS], env=engine_env())
    try:
        wait_ready(port, procs)
        return asyncio.run(drive(port, "vllm serve", args))
    finally:
        procs.stop("vllm-serve")


def start_dynamo(model: str, procs: Procs, workers: int, router_mode: str, extra: list[str],
                 store: Path) -> int:
    port = free_port()
    env = {"DYN_FILE_KV": str(store), "DYN_STORE_KV": "file", "DYN_LOG": "warn"}
    for i in range(workers):
        if f"worker-{i}" not in procs.procs:
            procs.start(f"worker-{i}", [sys.executable, "-m", "dynamo.vllm", "--model", model,
                                        "--served-model-name", NAME, *ENGINE_FLAGS, *extra],
                        env={**env, **engine_env(i if workers > 1 else None)})
    procs.start("frontend", [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                             "--http-port", str(port), "--router-mode", router_mode], env=env)
    wait_ready(port, procs, workers)
    return port


def run_dynamo(model: str, procs: Procs, args: argparse.Namespace, store: Path) -> list[dict[str, Any]]:
    port = start_dynamo(model, procs, 1, "round-robin", [], store)
    try:
        return asyncio.run(drive(port, "dynamo", args))
    finally:
        procs.stop_all()


# -- (c) prefix-heavy workload ---------------------------------------------------------------------------


async def prefix_workload(port: int, args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(7)
    prefixes = [text(args.prefix_words, rng) for _ in range(args.prefixes)]
    order = [i % args.prefixes for i in range(args.prefix_requests)]
    rng.shuffle(order)
    prompts = [prefixes[i] + " " + text(20, rng) for i in order]
    ttfts: list[float] = []
    cached = prompt = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal cached, prompt
        while not queue.empty():
            p = queue.get_nowait()
            t0 = time.perf_counter()
            first = None
            body = {"model": NAME, "prompt": p, "max_tokens": 8, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                        first = time.perf_counter()
                    usage = chunk.get("usage")
                    if usage:
                        prompt += usage["prompt_tokens"]
                        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            if first is not None:
                ttfts.append((first - t0) * 1e3)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        await asyncio.gather(*(user(client) for _ in range(args.prefix_concurrency)))
    return {"requests": len(prompts), "prompt_tokens": prompt, "cached_tokens": cached,
            "hit_pct": 100.0 * cached / prompt if prompt else float("nan"),
            "ttft_p50": percentile(ttfts, 50), "ttft_p90": percentile(ttfts, 90)}


def run_prefix(model: str, procs: Procs, args: argparse.Namespace, store_root: Path) -> list[dict[str, Any]]:
    rows = []
    extra = ["--num-gpu-blocks-override", str(args.kv_blocks)]
    for mode in ("kv", "round-robin"):
        # fresh engines per mode, so neither starts with the other's cache
        port = start_dynamo(model, procs, 2, mode, extra, store_root / mode)
        try:
            row = asyncio.run(prefix_workload(port, args))
        finally:
            procs.stop_all()
        row["mode"] = mode
        rows.append(row)
        print(f"  {mode}: hit {row['hit_pct']:.1f}%, TTFT p50 {row['ttft_p50']:.1f} ms", flush=True)
    return rows


def print_tables(a: list[dict[str, Any]], b: list[dict[str, Any]], c: list[dict[str, Any]]) -> None:
    cols = ("system", "c", "done", "errors", "req_s", "tok_s", "ttft_p50", "ttft_p99", "itl_p50")
    print("\n(a) vllm serve vs (b) dynamo frontend + dynamo.vllm (ms for latencies)")
    print(" | ".join(f"{h:>10}" for h in cols))
    for row in a + b:
        print(" | ".join(f"{row[h]:>10.2f}" if isinstance(row[h], float) else f"{row[h]!s:>10}" for h in cols))
    if a and b:
        print("\nratio (b)/(a)")
        print(" | ".join(f"{h:>10}" for h in ("c", "req_s", "tok_s", "ttft_p50", "ttft_p99", "itl_p50")))
        for ra, rb in zip(a, b, strict=False):
            print(" | ".join([f"{ra['c']:>10}"] + [f"{rb[k] / ra[k]:>10.3f}" if ra[k] else f"{'-':>10}"
                                                    for k in ("req_s", "tok_s", "ttft_p50", "ttft_p99", "itl_p50")]))
    if c:
        print("\n(c) prefix-heavy workload, 2 workers (engine-reported cached tokens)")
        keys = ("mode", "requests", "prompt_tokens", "cached_tokens", "hit_pct", "ttft_p50", "ttft_p90")
        print(" | ".join(f"{h:>13}" for h in keys))
        for row in c:
            print(" | ".join(f"{row[h]:>13.1f}" if isinstance(row[h], float) else f"{row[h]!s:>13}" for h in keys))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: the tiny random Qwen3, written on first use)")
    p.add_argument("--concurrency", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--osl", type=int, default=64, help="output tokens per request")
    p.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    p.add_argument("--prefixes", type=int, default=6, help="(c) distinct shared prefixes")
    p.add_argument("--prefix-words", type=int, default=380, help="(c) words per shared prefix (~500 tokens)")
    p.add_argument("--prefix-requests", type=int, default=96, help="(c) requests")
    p.add_argument("--prefix-concurrency", type=int, default=4)
    p.add_argument("--kv-blocks", type=int, default=80,
                   help="(c) KV blocks per worker: room for about half the prefixes, so placement matters")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = set(args.skip.split(",")) - {""}
    work = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    model = args.model
    if model is None:
        model = str(REPO / ".cache" / "tiny-qwen3")
        if not (Path(model) / "model.safetensors").exists():
            subprocess.run([sys.executable, "-m", "dynamo.vllm.tiny_model", model], check=True,
                           stdout=subprocess.DEVNULL)
    procs = Procs(work)
    print(f"engine_bench: model {model}, logs in {work}", flush=True)
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    c: list[dict[str, Any]] = []
    try:
        if "a" not in skip:
            print("(a) vllm serve", flush=True)
            a = run_vllm_serve(model, procs, args)
        if "b" not in skip:
            print("(b) dynamo", flush=True)
            b = run_dynamo(model, procs, args, work / "store-b")
        if "c" not in skip:
            print("(c) prefix-heavy, kv vs round-robin", flush=True)
            c = run_prefix(model, procs, args, work)
    finally:
        procs.stop_all()
    print_tables(a, b, c)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
