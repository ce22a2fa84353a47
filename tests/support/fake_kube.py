"""A local HTTP server speaking the few Kubernetes API calls the planner's connector makes: GET/PATCH of
one DynamoGraphDeployment and PATCH of scaling adapters' ``scale`` subresource. No cluster runs on
these machines; this stands in for the API server (real sockets, the official client on the other end).

The fake operator: an adapter scale patch sets the DGD service's ``spec.replicas``; ``rollout()``
makes the status catch up with the spec (so a test can watch readiness flip).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.procs import free_port

PREFIX = "/apis/nvidia.com/v1alpha1/namespaces/(?P<ns>[^/]+)/"
DGD_RE = re.compile(PREFIX + r"dynamographdeployments/(?P<name>[^/]+)$")
SCALE_RE = re.compile(PREFIX + r"dynamographdeploymentscalingadapters/(?P<name>[^/]+)/scale$")


def merge(dst: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


class FakeKube:
    def __init__(self, namespace: str, dgd: dict[str, Any], adapters: bool = True) -> None:
        self.namespace = namespace
        self.dgd = dgd
        self.adapters = adapters  # False: every adapter 404s (an operator without DGDSA)
        self.calls: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self) -> None:
                self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

            def do_GET(self) -> None:
                with fake.lock:
                    fake.calls.append(("GET", self.path, None))
                    m = DGD_RE.match(self.path)
                    if m and m["ns"] == fake.namespace and m["name"] == fake.dgd["metadata"]["name"]:
                        return self._send(200, fake.dgd)
                    return self._not_found()

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake.lock:
                    fake.calls.append(("PATCH", self.path, body))
                    name = fake.dgd["metadata"]["name"]
                    m = SCALE_RE.match(self.path)
                    if m and m["ns"] == fake.namespace:
                        svc = next((s for s in fake.dgd["spec"]["services"] if f"{name}-{s.lower()}" == m["name"]),
                                   None)
                        if not fake.adapters or svc is None:
                            return self._not_found()
                        fake.dgd["spec"]["services"][svc]["replicas"] = body["spec"]["replicas"]
                        return self._send(200, {"kind": "Scale", "spec": body["spec"]})
                    m = DGD_RE.match(self.path)
                    if m and m["ns"] == fake.namespace and m["name"] == name:
                        merge(fake.dgd, body)
                        return self._send(200, fake.dgd)
                    return self._not_found()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKube:
        self.thread.start()
        return self

    def rollout(self) -> None:
        """The operator finished: every service's status matches its spec."""
        with self.lock:
            status = self.dgd.setdefault("status", {}).setdefault("services", {})
            for name, svc in self.dgd["spec"]["services"].items():
                n = svc.get("replicas", 1)
                status[name] = {"replicas": n, "updatedReplicas": n, "readyReplicas": n}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sample_dgd(name: str = "llama", prefill: int = 1, decode: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeployment",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"services": {
            "Frontend": {"replicas": 1},
            "VllmPrefillWorker": {"subComponentType": "prefill", "replicas": prefill},
            "VllmDecodeWorker": {"subComponentType": "decode", "replicas": decode},
        }},
    }
