"""Chaos benchmark: steady streaming load while a worker is SIGKILLed every few seconds and restarted.

Starts a private deployment on loopback (file discovery, TCP request plane, one frontend, ``--workers``
separate mocker processes so each can be killed alone), drives it with ``--concurrency`` closed-loop
users sending streaming completions, and every ``--kill-every`` seconds SIGKILLs the next worker and
starts a replacement. Prints requests completed / failed, latency percentiles and the frontend's
migration counters. The goal: zero failed requests with migration on.

    python benchmarks/chaos.py                           # 60 s, migration limit 3
    python benchmarks/chaos.py --duration 20 --compare   # also a run with migration off

A request counts as failed when it gets a non-200 status, an SSE ``event: error``, no ``[DONE]``,
a ``usage.completion_tokens`` other than ``--osl``, or a transport error or timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO.parent / "shared" / "data" / "models" / "Qwen3-0.6B"
PROMPT = "Write a detailed report about the history of lighthouses along the northern coast."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- deployment -----------------------------------------------------------------------------------


class Deployment:
    """Frontend + mocker processes in one temp dir; every process in its own group, all reaped."""

    def __init__(self, args: argparse.Namespace, migration_limit: int) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="dyn-chaos-"))
        (self.root / "logs").mkdir()
        self.port = free_port()
        self.migration_limit = migration_limit
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "ETCD_", "NATS_"))}
        self.env = {**env, "DYN_FILE_KV": str(self.root / "kv"), "DYN_STORE_KV": "file", "DYN_REQUEST_PLANE": "tcp",
                    "DYN_EVENT_PLANE": "zmq", "HF_HUB_OFFLINE": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.frontend: subprocess.Popen[bytes] | None = None
        self.spawned = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, *argv], env=self.env, cwd=self.root, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def spawn_worker(self) -> subprocess.Popen[bytes]:
        self.spawned += 1
        return self._spawn(f"mocker{self.spawned}", "-m", "dynamo.mocker", "--model-path", str(self.args.model_path),
                           "--speedup-ratio", str(self.args.speedup))

    def start(self) -> None:
        self.workers = [self.spawn_worker() for _ in range(self.args.workers)]
        self.frontend = self._spawn("frontend", "-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                                    "--http-port", str(self.port), "--migration-limit", str(self.migration_limit))
        self.wait_workers(self.args.workers, 60)

    def workers_seen(self) -> float:
        try:
            return metric(scrape(self.url), "dynamo_frontend_model_workers")
        except (httpx.HTTPError, ValueError):
            return -1

    def wait_workers(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.workers_seen() != count:
            for p in [self.frontend, *self.workers]:
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"a component exited with {p.returncode}; logs in {self.root}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers never showed up; logs in {self.root}")
            time.sleep(0.1)

    def kill_and_replace(self, index: int) -> None:
        """SIGKILL the worker in slot ``index`` (mod workers) and start a fresh one in its place."""
        slot = index % len(self.workers)
        victim = self.workers[slot]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        self.workers[slot] = self.spawn_worker()

    def close(self, keep_logs: bool) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if not keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


async def one_request(client: httpx.AsyncClient, url: str, osl: int, tally: Tally) -> None:
    body = {"model": "Qwen3-0.6B", "prompt": PROMPT, "max_tokens": osl, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    tokens = None
    done = False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                tally.fail(f"http {resp.status_code}")
                return
            event = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                    if event == "error":
                        tally.fail("sse error event")
                        return
                    if data == "[DONE]":
                        done = True
                    else:
                        usage = json.loads(data).get("usage")
                        if usage:
                            tokens = usage["completion_tokens"]
                    event = None
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        tally.fail(type(exc).__name__)
        return
    if not done:
        tally.fail("no [DONE]")
    elif tokens != osl:
        tally.fail(f"{tokens} tokens")
    else:
        tally.latencies.append(time.perf_counter() - t0)


async def drive(dep: Deployment, args: argparse.Namespace) -> tuple[Tally, int, float]:
    tally = Tally()
    stop = asyncio.Event()

    async def user(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await one_request(client, dep.url, args.osl, tally)

    kills = 0
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        users = [asyncio.ensure_future(user(client)) for _ in range(args.concurrency)]
        t0 = time.monotonic()
        try:
            while True:
                next_kill = t0 + (kills + 1) * args.kill_every
                end = t0 + args.duration
                if next_kill >= end:
                    await asyncio.sleep(max(0.0, end - time.monotonic()))
                    break
                await asyncio.sleep(max(0.0, next_kill - time.monotonic()))
                await asyncio.to_thread(dep.kill_and_replace, kills)
                kills += 1
        finally:
            stop.set()
            # In-flight requests finish on their own (a closed-loop user stops after its current one).
            await asyncio.wait_for(asyncio.gather(*users, return_exceptions=True), 90)
        elapsed = time.monotonic() - t0
    return tally, kills, elapsed


def run(args: argparse.Namespace, migration_limit: int) -> dict[str, Any]:
    dep = Deployment(args, migration_limit)
    ok = False
    try:
        dep.start()
        tally, kills, elapsed = asyncio.run(drive(dep, args))
        m = scrape(dep.url)
        ok = True
        completed = len(tally.latencies)
        failed = sum(tally.failures.values())
        return {
            "migration limit": migration_limit,
            "seconds": round(elapsed, 1),
            "kills": kills,
            "completed": completed,
            "failed": failed,
            "failed %": 100.0 * failed / max(1, completed + failed),
            "p50 s": percentile(tally.latencies, 50),
            "p99 s": percentile(tally.latencies, 99),
            "max s": max(tally.latencies, default=float("nan")),
            "migr new": int(metric(m, "dynamo_frontend_model_migration_total", migration_type="new_request")),
            "migr ongoing": int(metric(m, "dynamo_frontend_model_migration_total", migration_type="ongoing_request")),
            "why failed": ", ".join(f"{k}: {v}" for k, v in sorted(tally.failures.items())) or "-",
        }
    finally:
        dep.close(keep_logs=args.keep_logs or not ok)
        if not ok:
            print(f"logs kept in {dep.root}", file=sys.stderr)


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    cells = [[(f"{r[c]:.3f}" if isinstance(r[c], float) and c.endswith(" s") else
               f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="Seconds of load (default 60).")
    p.add_argument("--kill-every", type=float, default=10.0, help="Seconds between worker kills (default 10).")
    p.add_argument("--workers", type=int, default=3, help="Mocker processes (default 3).")
    p.add_argument("--concurrency", type=int, default=24, help="Closed-loop streaming users (default 24).")
    p.add_argument("--osl", type=int, default=64, help="max_tokens per request (default 64).")
    p.add_argument("--speedup", type=float, default=0.5, help="Mocker --speedup-ratio (default 0.5: ~0.8 s/stream).")
    p.add_argument("--migration-limit", type=int, default=3, help="Frontend --migration-limit (default 3).")
    p.add_argument("--compare", action="store_true", help="Also run with migration off (--migration-limit 0).")
    p.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks reap every process.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    rows = [run(args, args.migration_limit)]
    if args.compare and args.migration_limit != 0:
        rows.append(run(args, 0))
    print(f"\nchaos: {args.workers} workers, {args.concurrency} users, OSL {args.osl}, "
          f"SIGKILL + restart every {args.kill_every:g}s for {args.duration:g}s")
    print_table(rows)
    return 0 if rows[0]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
