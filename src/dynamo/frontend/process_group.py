"""Several frontend processes on one port (``--num-workers N``).

One Python process tokenizes, templates and frames requests on one core at a time (the GIL); the way to
use more cores is more processes. Each worker is a complete frontend (its own runtime, model discovery,
router and HTTP server) bound to the same port with ``SO_REUSEPORT``, so the kernel spreads incoming
connections over them. In ``kv`` mode the workers keep one view of the fleet's load through router
replica sync (``--router-replica-sync``, turned on for them): each worker learns of the others' bookings,
and each builds the same prefix index from the workers' KV events.

The supervisor (the process the operator started) reserves the port, starts the workers, and stops them
all on SIGTERM/SIGINT; when one worker dies the others are stopped too and the supervisor exits with the
dead worker's status (an orchestrator restarts the whole group, as it would a single frontend).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger("dynamo.frontend")

#: seconds a worker gets after SIGTERM beyond the HTTP graceful-shutdown timeout before SIGKILL
KILL_AFTER_GRACE_S = 5.0
#: how often the supervisor looks for a worker that exited on its own (signals wake it at once)
POLL_S = 0.5


def reuse_port_supported() -> bool:
    """``SO_REUSEPORT`` load-balances connections between listeners only on Linux (BSD/macOS let the
    last binder take every connection), so several workers on one port are a Linux feature."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``: every process of
    the same user that binds the same address this way gets a share of the incoming connections."""
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def worker_argv(argv: Sequence[str], port: int, replica_sync: bool) -> list[str]:
    """A worker's command line: the supervisor's own, with the resolved port (``--http-port 0`` must
    mean one port for all), one process, ``SO_REUSEPORT``, and replica sync when routing by KV."""
    extra = ["--num-workers", "1", "--http-port", str(port), "--http-reuse-port"]
    if replica_sync:
        extra.append("--router-replica-sync")
    return [*argv, *extra]


def _die_with_parent() -> None:
    # A worker must not outlive a supervisor that was SIGKILLed: it would hold the port forever.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def supervise(argv: Sequence[str], host: str, port: int, num_workers: int, replica_sync: bool,
              grace_s: float) -> int:
    """Run ``num_workers`` frontend processes on ``host:port`` until a signal or a worker's exit;
    returns the exit status for the supervisor."""
    reservation = bind_reuse_port(host, port)  # holds the port (and resolves port 0) for the group
    port = reservation.getsockname()[1]
    args = worker_argv(argv, port, replica_sync)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[subprocess.Popen[bytes]] = []
    status = 0
    try:
        for index in range(num_workers):
            env = {**os.environ, "DYN_FRONTEND_WORKER_INDEX": str(index)}
            workers.append(subprocess.Popen([sys.executable, "-m", "dynamo.frontend", *args], env=env,
                                            preexec_fn=_die_with_parent))
        logger.info("frontend: %d worker processes sharing port %d (pids %s)%s", num_workers, port,
                    ", ".join(str(w.pid) for w in workers), "; router replica sync on" if replica_sync else "")
        while not stop.is_set():
            dead = next((w for w in workers if w.poll() is not None), None)
            if dead is not None:
                status = dead.returncode if dead.returncode > 0 else 1
                logger.error("frontend worker pid %d exited with %s; stopping the others", dead.pid,
                             dead.returncode)
                break
            stop.wait(POLL_S)
    finally:
        _stop_all(workers, grace_s + KILL_AFTER_GRACE_S)
        reservation.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and status == 0:
        logger.info("frontend: all %d workers stopped", num_workers)
    return status


def _stop_all(workers: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for w in workers:
        if w.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("frontend worker pid %d ignored SIGTERM for %.0f s; killing it", w.pid, timeout)
            w.kill()
            w.wait()
