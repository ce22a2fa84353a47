"""Local connector: worker processes on this host, one command line per pool.

Scale-up spawns the command (it registers itself through discovery like any worker); scale-down sends
SIGTERM to the newest worker, which leaves discovery at once and finishes the streams it holds (the
runtime's graceful shutdown), and is killed only if it outlives ``drain_timeout``. Readiness: every
live worker registered (the pool's endpoint has at least as many instances as we run) and no worker
still draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.client import Client
from dynamo.runtime.errors import InvalidArgument

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    command: list[str]
    endpoint: str  # dyn://ns.component.generate, where its workers register
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    draining: list[subprocess.Popen[bytes]] = field(default_factory=list)


def worker_command(cmd: str) -> list[str]:
    """Split a ``--local-worker-cmd``; a leading ``python`` means this interpreter (the same venv)."""
    argv = shlex.split(cmd)
    if not argv:
        raise InvalidArgument("empty worker command line")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


class LocalConnector(Connector):
    name = "local"

    def __init__(self, runtime: DistributedRuntime, pools: dict[str, Pool], drain_timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        self.runtime = runtime
        self.pools = pools
        self.drain_timeout = drain_timeout
        self.env = {**os.environ, **(env or {})}
        self._clients: dict[str, Client] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self.spawned = 0
        self.stopped = 0

    async def start(self) -> None:
        for sub, pool in self.pools.items():
            self._clients[sub] = await self.runtime.endpoint(pool.endpoint).client()

    def registered(self, sub: str) -> int:
        client = self._clients.get(sub)
        return len(client.instance_ids()) if client is not None else 0

    async def current_replicas(self) -> dict[str, int]:
        return {sub: len(self._prune(pool)) for sub, pool in self.pools.items()}

    def _prune(self, pool: Pool) -> list[subprocess.Popen[bytes]]:
        for proc in [p for p in pool.running if p.poll() is not None]:
            logger.warning("local worker pid %d exited with %s", proc.pid, proc.returncode)
            pool.running.remove(proc)
        return pool.running

    async def set_component_replicas(self, targets: list[TargetReplica], blocking: bool = False) -> None:
        for t in targets:
            pool = self.pools.get(t.sub_component_type)
            if pool is None:
                raise InvalidArgument(f"local connector has no {t.sub_component_type!r} pool")
            running = self._prune(pool)
            while len(running) < t.desired_replicas:
                proc = self._spawn(pool)
                running.append(proc)
                self.spawned += 1
                logger.info("started %s worker pid %d", t.sub_component_type, proc.pid)
            while len(running) > max(0, t.desired_replicas):
                proc = running.pop()  # newest first: the oldest workers hold the warmest caches
                self._drain(pool, proc)
                logger.info("draining %s worker pid %d (SIGTERM)", t.sub_component_type, proc.pid)
        if blocking:
            await self.wait_ready()

    def _spawn(self, pool: Pool) -> subprocess.Popen[bytes]:
        # Its own session: a Ctrl-C aimed at the planner must not reach workers before they are drained.
        return subprocess.Popen(pool.command, env=self.env, start_new_session=True)

    def _drain(self, pool: Pool, proc: subprocess.Popen[bytes]) -> None:
        pool.draining.append(proc)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        task = asyncio.get_running_loop().create_task(self._reap(pool, proc))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _reap(self, pool: Pool, proc: subprocess.Popen[bytes]) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), self.drain_timeout)
        except asyncio.TimeoutError:
            logger.warning("worker pid %d still running %.0fs after SIGTERM: killing it", proc.pid, self.drain_timeout)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        pool.draining.remove(proc)
        self.stopped += 1

    async def is_ready(self) -> bool:
        for sub, pool in self.pools.items():
            if pool.draining or self.registered(sub) < len(self._prune(pool)):
                return False
        return True

    async def close(self) -> None:
        """Stop every worker this connector started (drained like a scale-down)."""
        for pool in self.pools.values():
            while pool.running:
                self._drain(pool, pool.running.pop())
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
