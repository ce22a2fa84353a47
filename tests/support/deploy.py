"""A real local deployment (mocker workers + frontend as subprocesses) for end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import SHARED_DATA, free_port

QWEN = SHARED_DATA / "models" / "Qwen3-0.6B"
TINYLLAMA = SHARED_DATA / "models" / "TinyLlama_v1.1"


@dataclass
class Deployment:
    env: dict[str, str]
    port: int
    logdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    frontend: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def mocker(self, *extra: str, name: str = "mocker", model: Path = QWEN) -> subprocess.Popen[bytes]:
        return self.spawn(name, "-m", "dynamo.mocker", "--model-path", str(model), *extra)

    def start_frontend(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.frontend = self.spawn("frontend", "-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                                   "--http-port", str(self.port), *extra, env=env)
        return self.frontend

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def models(self) -> list[str]:
        try:
            return [m["id"] for m in self.get("/v1/models")[1]["data"]]
        except (OSError, ValueError, KeyError):
            return []

    def wait_models(self, expected: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None and p.returncode not in (0, -9, -15):
                    raise RuntimeError(f"a component exited with {p.returncode}: {self.logs()}")
            if set(self.models()) == expected:
                return
            time.sleep(0.1)
        raise TimeoutError(f"models {self.models()} != {expected}; logs:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logdir.glob("*.log"))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def new_deployment(extra_env: dict[str, str] | None = None) -> Deployment:
    import os

    root = Path(tempfile.mkdtemp(prefix="dyn-e2e-"))
    (root / "logs").mkdir()
    env = {**os.environ, "DYN_FILE_KV": str(root / "kv"), "DYN_STORE_KV": "file", "DYN_EVENT_PLANE": "zmq",
           "DYN_REQUEST_PLANE": "tcp", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    env.pop("DYN_NAMESPACE", None)
    return Deployment(env, free_port(), root / "logs")
