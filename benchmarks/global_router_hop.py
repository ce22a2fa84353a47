"""What the global router's extra hop costs: the same requests sent straight to a pool's router
endpoint and through ``python -m dynamo.global_router`` (agg mode, one pool), each in its own process.

The pool router is a stand-in echo endpoint at ``dyn://bench_pool.router.generate`` (it answers with
token items at once), so the numbers are the hop itself: decode, pool choice, re-encode, one more
request-plane round trip. Prints 1-item requests/s at concurrency 1 and 32, p50/p99 latency at
concurrency 1, and the token rate of one long stream of one-token items (median of --runs).

    python benchmarks/global_router_hop.py [--runs 3] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import uvloop

from dynamo.runtime import DistributedRuntime

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "data" / "models" / "Qwen3-0.6B"

POOL = textwrap.dedent("""
    import uvloop
    from dynamo.runtime import DistributedRuntime
    from dynamo.runtime.shutdown import install_signal_handlers

    async def main():
        rt = await DistributedRuntime.create("file")
        install_signal_handlers(rt)
        async def generate(req, ctx):
            n = req["stop_conditions"]["max_tokens"]
            for i in range(n - 1):
                yield {"token_ids": [i]}
            yield {"token_ids": [n], "finish_reason": "length"}
        await rt.endpoint("dyn://bench_pool.router.generate").serve_endpoint(generate)
    uvloop.run(main())
""")

CONFIG = {"mode": "agg", "num_agg_pools": 1, "agg_pool_dynamo_namespaces": ["bench_pool"],
          "agg_pool_selection_strategy": {"ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 4,
                                          "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 4,
                                          "agg_pool_mapping": [[0] * 4 for _ in range(4)]}}


def request(max_tokens: int) -> dict:
    return {"model": "Qwen3-0.6B", "token_ids": list(range(128)), "stop_conditions": {"max_tokens": max_tokens},
            "extra_args": {"ttft_target": 200, "itl_target": 20}}


async def one(client, max_tokens: int) -> int:
    """Tokens received (items may carry several when the consumer lags behind)."""
    n = 0
    async for item in await client.round_robin(request(max_tokens)):
        n += len(item["token_ids"])
    return n


async def requests_per_s(client, total: int, concurrency: int) -> tuple[float, list[float]]:
    per = total // concurrency
    latencies: list[float] = []

    async def worker() -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            await one(client, 1)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0), latencies


async def tokens_per_s(client, items: int) -> float:
    t0 = time.perf_counter()
    n = await one(client, items)
    return n / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-gr-"))
    os.environ["DYN_FILE_KV"] = str(root / "kv")
    (root / "pools.json").write_text(json.dumps(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DYN_LOG": "warn"}
    pool = await asyncio.create_subprocess_exec(sys.executable, "-c", POOL, env=env)
    gr = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dynamo.global_router", "--config", str(root / "pools.json"), "--model-name",
        "Qwen3-0.6B", "--model-path", str(MODEL), "--namespace", "bench", env=env)
    rt = await DistributedRuntime.create("file")
    try:
        targets = {"direct to the pool router": "dyn://bench_pool.router.generate",
                   "through the global router": "dyn://bench.global_router.generate"}
        clients = {}
        for label, url in targets.items():
            clients[label] = await rt.endpoint(url).client()
            await clients[label].wait_for_instances(60)
            await requests_per_s(clients[label], 400, 8)  # warm up connections and code paths
        rows = []
        for label, client in clients.items():
            c1, c32, p50, p99, stream = [], [], [], [], []
            for _ in range(args.runs):
                rate, lat = await requests_per_s(client, args.requests // 4, 1)
                c1.append(rate)
                lat.sort()
                p50.append(lat[len(lat) // 2] * 1e3)
                p99.append(lat[int(len(lat) * 0.99)] * 1e3)
                c32.append((await requests_per_s(client, args.requests, 32))[0])
                stream.append(await tokens_per_s(client, args.items))
            rows.append((label, *(statistics.median(v) for v in (c1, c32, p50, p99, stream))))
        print(f"\nglobal router hop (tcp request plane, each side its own process), median of {args.runs} runs")
        print(f"{'path':28} {'req/s c=1':>10} {'req/s c=32':>11} {'p50 ms c=1':>11} {'p99 ms c=1':>11} "
              f"{'tokens/s':>10}")
        for label, c1, c32, p50, p99, stream in rows:
            print(f"{label:28} {c1:10,.0f} {c32:11,.0f} {p50:11.3f} {p99:11.3f} {stream:10,.0f}")
    finally:
        await rt.shutdown(grace_period=0)
        for proc in (gr, pool):
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--items", type=int, default=20_000)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
