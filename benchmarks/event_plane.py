"""Event-plane throughput: one publisher -> one subscriber, 200-byte payloads, ZMQ and NATS.

Publisher and subscriber share one process and one event loop (uvloop when installed), so the
number is the end-to-end rate including both sides' Python work. Starts its own nats-server on a
free loopback port (skips NATS if the binary is missing). Prints the median of 3 runs.

    python benchmarks/event_plane.py [--events 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.nats_fixtures import NatsServer, find_nats_server

from dynamo.runtime.distributed import DistributedRuntime
from dynamo.runtime.event_plane.envelope import encode_payload

PAYLOAD_BYTES = 200


def make_payload() -> dict[str, bytes]:
    filler = PAYLOAD_BYTES
    while len(encode_payload({"d": b"x" * filler})) > PAYLOAD_BYTES:
        filler -= 1
    obj = {"d": b"x" * filler}
    assert len(encode_payload(obj)) == PAYLOAD_BYTES
    return obj


async def one_run(kind: str, events: int) -> float:
    sub_rt = await DistributedRuntime.create("mem", event_plane=kind)
    pub_rt = await DistributedRuntime.create("mem", event_plane=kind)
    ns = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        sub = await sub_rt.namespace(ns).component("w").subscribe("kv-events")
        pub = await pub_rt.namespace(ns).component("w").event_publisher("kv-events")
        await sub.wait_for_publishers(1)
        payload = make_payload()

        # Past the ZMQ slow joiner: probe until the subscriber hears the publisher.
        async def probe() -> None:
            while True:
                await pub.publish({"probe": 1})
                await asyncio.sleep(0.005)

        prober = asyncio.create_task(probe())
        await asyncio.wait_for(sub.__anext__(), 10)
        prober.cancel()
        while sub.tracker.expected.get(pub.publisher_id, 0) < pub.sequence:
            await asyncio.wait_for(sub.__anext__(), 10)  # drain leftover probes

        first = pub.sequence
        last = first + events - 1

        async def produce() -> None:
            for i in range(events):
                await pub.publish(payload)
                if i % 500 == 499:
                    await asyncio.sleep(0)

        start = time.perf_counter()
        producer = asyncio.create_task(produce())
        async for env in sub:
            if env.sequence == last:
                break
        elapsed = time.perf_counter() - start
        await producer
        if sub.missed:
            print(f"  warning: {kind} run lost {sub.missed} events", file=sys.stderr)
        return events / elapsed
    finally:
        await pub_rt.shutdown(grace_period=0)
        await sub_rt.shutdown(grace_period=0)


async def bench(kind: str, events: int, runs: int) -> list[float]:
    return [await one_run(kind, events) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    results: dict[str, list[float]] = {"zmq": asyncio.run(bench("zmq", args.events, args.runs))}
    binary = find_nats_server()
    if binary is None:
        print("nats-server not found: skipping NATS", file=sys.stderr)
    else:
        store = Path(tempfile.mkdtemp(prefix="dynamo-bench-nats-"))
        server = NatsServer(binary, store)
        try:
            server.start()
            os.environ["NATS_SERVER"] = server.url
            results["nats"] = asyncio.run(bench("nats", args.events, args.runs))
        finally:
            server.stop()
            shutil.rmtree(store, ignore_errors=True)

    print(f"\nevent plane, 1 publisher -> 1 subscriber, {PAYLOAD_BYTES}-byte payloads, "
          f"{args.events} events/run, {loop_name}, median of {args.runs}")
    print(f"{'transport':<10} {'events/s (median)':>18} {'runs':>30}")
    for kind, rates in results.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{kind:<10} {statistics.median(rates):>18,.0f} {runs:>30}")


if __name__ == "__main__":
    main()
