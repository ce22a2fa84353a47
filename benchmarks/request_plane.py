"""Request-plane throughput: one echo endpoint in its own process, a client in this one.

Prints requests/s for 1-item requests and items/s for a long stream at concurrency 1 and 64
(median of 3 runs). Usage: python benchmarks/request_plane.py [--runs 3] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import textwrap
import time

import uvloop

from dynamo.runtime import DistributedRuntime

SERVER = textwrap.dedent("""
    import asyncio, uvloop
    from dynamo.runtime import DistributedRuntime
    from dynamo.runtime.shutdown import install_signal_handlers

    async def main():
        rt = await DistributedRuntime.create("file")
        install_signal_handlers(rt)
        async def echo(req, ctx):
            n = req.get("n", 1)
            item = req.get("item", b"")
            for _ in range(n):
                yield item
        await rt.endpoint("dyn://bench.echo.generate").serve_endpoint(echo)
    uvloop.run(main())
""")


async def _requests(client, total: int, concurrency: int) -> float:
    per = total // concurrency

    async def worker() -> None:
        for _ in range(per):
            stream = await client.round_robin({"n": 1})
            async for _ in stream:
                pass

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0)


async def _stream(client, items: int, concurrency: int) -> float:
    per = items // concurrency

    async def worker() -> int:
        n = 0
        stream = await client.round_robin({"n": per, "item": b"x" * 16})
        async for _ in stream:
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(counts) / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> None:
    kv = tempfile.mkdtemp(prefix="bench-kv-")
    os.environ["DYN_FILE_KV"] = kv
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, env=dict(os.environ))
    rt = await DistributedRuntime.create("file")
    try:
        client = await rt.endpoint("dyn://bench.echo.generate").client()
        await client.wait_for_instances(30)
        await _requests(client, 500, 8)  # warm up connection and code paths
        rows = []
        for label, fn, amount in (
            ("1-item requests, c=1", _requests, args.requests // 4),
            ("1-item requests, c=64", _requests, args.requests),
            ("long stream, c=1 (items/s)", _stream, args.items),
            ("long stream, c=64 (items/s)", _stream, args.items),
        ):
            conc = 64 if "c=64" in label else 1
            results = [await fn(client, amount, conc) for _ in range(args.runs)]
            rows.append((label, statistics.median(results), min(results), max(results)))
        print(f"\nrequest plane (tcp, echo server in a separate process), median of {args.runs} runs")
        print(f"{'workload':32} {'median/s':>12} {'min':>12} {'max':>12}")
        for label, med, lo, hi in rows:
            print(f"{label:32} {med:12,.0f} {lo:12,.0f} {hi:12,.0f}")
    finally:
        await rt.shutdown(grace_period=0)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--items", type=int, default=200_000)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
