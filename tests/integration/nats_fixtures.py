"""A real nats-server with JetStream for integration tests (session-scoped fixture ``nats_server``).

Import the fixture into a test module (``from tests.integration.nats_fixtures import nats_server``).
The server listens on a random free loopback port; ``restart()`` keeps the port and the JetStream
store directory, so streams, consumers and buckets survive it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import free_port

READY_TIMEOUT_SECS = 15.0
STOP_TIMEOUT_SECS = 10.0


def find_nats_server() -> str | None:
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class NatsServer:
    """A nats-server subprocess: ``url``, ``start()``, ``stop()``, ``restart()``, ``running``."""

    def __init__(self, binary: str, store_dir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.url = f"nats://{self.host}:{self.port}"
        self.log_path = store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}; log:\n{self._log_tail()}")
            if self._accepts_clients():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nats-server not ready on {self.url} after {READY_TIMEOUT_SECS}s; log:\n{self._log_tail()}")
            time.sleep(0.02)  # poll interval of a deadline-bounded readiness loop

    def _accepts_clients(self) -> bool:
        # The server sends INFO as soon as it accepts a client; JetStream is enabled before that.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.settimeout(0.5)
                return s.recv(5).startswith(b"INFO")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        message = ("nats-server binary not found (looked on PATH, /usr/sbin, /usr/bin, /usr/local/bin, "
                   "$NATS_SERVER_BIN): install it with `apt-get install nats-server` or `make deps`")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("!!! SKIPPING NATS TESTS: " + message)
    store = Path(tempfile.mkdtemp(prefix="dynamo-nats-"))
    server = NatsServer(binary, store)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)
