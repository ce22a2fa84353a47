"""A worker process for runtime tests: serves ``dyn://test.worker.generate`` on the configured store.

Each request ``{"n": N, "delay": s}`` streams N items ``{"i": k, "instance": id}``; the ``stop`` test
relies on the handler observing the context and recording that it ended early.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvloop

from dynamo.runtime import DistributedRuntime, RequestContext
from dynamo.runtime.shutdown import install_signal_handlers


async def main(store: str, ready_file: Path | None, startup_delay: float, request_plane: str) -> None:
    runtime = await DistributedRuntime.create(store, request_plane=request_plane)
    install_signal_handlers(runtime)
    await runtime.start_status_server()  # when DYN_SYSTEM_PORT is set
    if startup_delay:
        await asyncio.sleep(startup_delay)  # a slow engine start, as the status server sees it
    iid = runtime.instance_id

    async def generate(request: dict, ctx: RequestContext):
        n = int(request.get("n", 1))
        delay = float(request.get("delay", 0))
        for i in range(n):
            if ctx.is_stopped():
                return
            if delay:
                await asyncio.sleep(delay)
            yield {"i": i, "instance": iid}

    ep = runtime.namespace("test").component("worker").endpoint("generate")
    await ep.start_serving(generate)
    runtime.health.set_engine_ready()
    if ready_file is not None:
        ready_file.write_text(f"{iid}\n")  # noqa: ASYNC240  (once, at start-up)
    await runtime.wait_for_shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="file")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--request-plane", default="tcp")
    args = parser.parse_args()
    uvloop.run(main(args.store, args.ready_file, args.startup_delay, args.request_plane))
