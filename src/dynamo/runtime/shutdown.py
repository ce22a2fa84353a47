"""SIGTERM/SIGINT → unregister, drain in-flight streams within the grace period, exit cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)


def install_signal_handlers(runtime: DistributedRuntime) -> None:
    loop = asyncio.get_running_loop()
    state = {"signals": 0}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(grace: float | None) -> None:
        task = loop.create_task(runtime.shutdown(grace_period=grace))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_signal(sig: signal.Signals) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            logger.warning("second %s: exiting without waiting for in-flight requests", sig.name)
            spawn(0)
            return
        logger.info("%s received: unregistering and draining", sig.name)
        spawn(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
