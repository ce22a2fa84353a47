"""A real Prometheus server (Debian's ``prometheus`` package) on a random loopback port, scraping
the targets a test names every 0.5 s. Import :func:`prometheus_factory` into a test module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import find_binary
from tests.support.procs import free_port, wait_for


class PrometheusServer:
    def __init__(self, binary: str, targets: list[str], scrape_interval: str = "500ms") -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prom-test-"))
        config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
                  "scrape_configs": [{"job_name": "dynamo", "static_configs": [{"targets": targets}]}]}
        # JSON is YAML: no yaml dependency for one file.
        (self.dir / "prometheus.yml").write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, 30, 0.1, what="prometheus to be ready")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as resp:
            return json.load(resp)["data"]["result"]

    def targets_up(self) -> bool:
        return bool(self.query("up")) and all(r["value"][1] == "1" for r in self.query("up"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus_factory() -> Iterator:
    """``start(targets)`` → a running :class:`PrometheusServer`; every one is stopped after the test."""
    binary = find_binary("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus binary missing in CI (apt-get install prometheus)")
        pytest.skip("PROMETHEUS BINARY MISSING: apt-get install prometheus to run these tests")
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(binary, targets)
        servers.append(server)
        server.start()
        return server

    yield start
    for s in servers:
        s.stop()
