"""Request-plane throughput: one echo endpoint in its own process, a client in this one.

Prints requests/s for 1-item requests and items/s for a long stream at concurrency 1 and 64
(median of 3 runs) for each request plane (tcp, nats, http). For nats a nats-server is started
on a free loopback port unless NATS_SERVER is set.
Usage: python benchmarks/request_plane.py [--planes tcp,nats,http] [--runs 3] [--requests 6400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
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
        rt = await DistributedRuntime.from_settings()
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


WORKLOADS = ("1-item requests, c=1", "1-item requests, c=64", "long stream, c=1 (items/s)",
             "long stream, c=64 (items/s)")


async def bench_plane(plane: str, args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    kv = tempfile.mkdtemp(prefix="bench-kv-")
    env = {**os.environ, "DYN_FILE_KV": kv, "DYN_STORE_KV": "file", "DYN_REQUEST_PLANE": plane}
    os.environ["DYN_FILE_KV"] = kv
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, env=env)
    rt = await DistributedRuntime.create("file")
    try:
        client = await rt.endpoint("dyn://bench.echo.generate").client()
        await client.wait_for_instances(30)
        assert list(client.instances()[0].transport) == [plane]
        await _requests(client, 500, 8)  # warm up connection and code paths
        rows = []
        for label, fn, amount in zip(WORKLOADS, (_requests, _requests, _stream, _stream),
                                     (args.requests // 4, args.requests, args.items // 4, args.items), strict=True):
            conc = 64 if "c=64" in label else 1
            results = [await fn(client, amount, conc) for _ in range(args.runs)]
            rows.append((label, statistics.median(results), min(results), max(results)))
        return rows
    finally:
        await rt.shutdown(grace_period=0)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        shutil.rmtree(kv, ignore_errors=True)


def start_nats() -> subprocess.Popen[bytes] | None:
    if os.environ.get("NATS_SERVER"):
        return None
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    os.environ["NATS_SERVER"] = f"nats://127.0.0.1:{port}"
    return proc


async def run(args: argparse.Namespace) -> None:
    planes = [p.strip() for p in args.planes.split(",") if p.strip()]
    nats_proc = start_nats() if "nats" in planes else None
    try:
        results = {plane: await bench_plane(plane, args) for plane in planes}
    finally:
        if nats_proc is not None:
            nats_proc.terminate()
            nats_proc.wait(10)
    print(f"\nrequest planes (echo server in a separate process), median of {args.runs} runs; per second")
    print(f"{'workload':30}" + "".join(f"{p:>12}" for p in planes)
          + ("".join(f"{p + '/tcp':>11}" for p in planes if p != "tcp") if "tcp" in planes else ""))
    for i, label in enumerate(WORKLOADS):
        meds = {p: results[p][i][1] for p in planes}
        line = f"{label:30}" + "".join(f"{meds[p]:12,.0f}" for p in planes)
        if "tcp" in planes:
            line += "".join(f"{meds[p] / meds['tcp']:10.2f}x" for p in planes if p != "tcp")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", default="tcp,nats,http")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--items", type=int, default=200_000)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
