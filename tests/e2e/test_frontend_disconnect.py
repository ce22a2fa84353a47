"""Clients that go away mid-request: the frontend must stop the engine work and settle its gauges.

Mocker at speedup 1 with a large ``max_tokens``, so a request is still generating when the client leaves.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.support.deploy import new_deployment
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "1", "--context-length", "8192")
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield dep
    finally:
        dep.close()


def gauge(dep, name: str) -> float:
    text = httpx.get(dep.url + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))


def settled(dep) -> bool:
    return (gauge(dep, "dynamo_frontend_inflight_requests") == 0
            and gauge(dep, "dynamo_frontend_queued_requests") == 0)


def raw_post(dep, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", dep.port), timeout=10)
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 6000}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6000}),
])
def test_client_disconnect_on_a_non_streaming_request_cancels_it(deployment, path, body):
    wait_for(lambda: settled(deployment), 10, what="an idle frontend")
    before = gauge(deployment, "dynamo_frontend_disconnected_clients_total")
    sock = raw_post(deployment, path, body)
    try:
        # Generating: the frontend counts it in flight and the worker holds its blocks.
        wait_for(lambda: gauge(deployment, "dynamo_frontend_inflight_requests") == 1
                 and gauge(deployment, "dynamo_frontend_worker_kv_used_blocks{") > 0, 10,
                 what="the request to be generating")
    finally:
        sock.close()
    wait_for(lambda: gauge(deployment, "dynamo_frontend_inflight_requests") == 0, 10,
             what="the frontend to drop the request")
    wait_for(lambda: gauge(deployment, "dynamo_frontend_worker_kv_used_blocks{") == 0, 10,
             what="the worker to free its blocks")
    assert gauge(deployment, "dynamo_frontend_disconnected_clients_total") == before + 1


@pytest.mark.parametrize("body", [
    {"model": MODEL, "prompt": "x", "max_tokens": 6000, "n": 3, "stream": True},
    {"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 6000, "stream": True},
])
def test_multi_choice_stream_ended_early_settles_gauges_without_errors(deployment, body):
    wait_for(lambda: settled(deployment), 10, what="an idle frontend")
    with httpx.stream("POST", deployment.url + "/v1/completions", timeout=30, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first chunk: the connection closes with the stream
    wait_for(lambda: settled(deployment), 10, what="in-flight and queued gauges back to 0")
    wait_for(lambda: gauge(deployment, "dynamo_frontend_worker_kv_used_blocks{") == 0, 10,
             what="the worker to free every choice's blocks")
    log = (deployment.logdir / "frontend.log").read_text(errors="replace")
    assert "already running" not in log and "Traceback" not in log, log[-3000:]
