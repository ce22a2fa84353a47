"""Non-KV routing modes and direct routing by header."""

from __future__ import annotations

import httpx
import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

BODY = {"model": "Qwen3-0.6B", "prompt": "hello", "max_tokens": 2}


@pytest.mark.parametrize("mode", ["random", "power-of-two", "least-loaded"])
def test_modes_serve_requests(mode):
    dep = new_deployment()
    try:
        dep.mocker("--num-workers", "2", "--speedup-ratio", "100")
        dep.start_frontend("--router-mode", mode)
        dep.wait_models({"Qwen3-0.6B"})
        for _ in range(10):
            r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        dep.close()


def test_direct_routing_by_header():
    dep = new_deployment()
    try:
        dep.mocker("--num-workers", "2", "--speedup-ratio", "100")
        dep.start_frontend("--router-mode", "direct")
        dep.wait_models({"Qwen3-0.6B"})
        _, health = dep.get("/health")
        ids = [inst["instance_id"] for inst in health["instances"]]
        for iid in ids:
            r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30,
                           headers={"x-worker-instance-id": str(iid)})
            assert r.status_code == 200, r.text
        # Without the header, direct mode cannot choose: a clear 400.
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30)
        assert r.status_code == 400 and "x-worker-instance-id" in r.json()["error"]["message"]
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30, headers={"x-worker-instance-id": "12345"})
        assert r.status_code == 404
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30, headers={"x-worker-instance-id": "zz!"})
        assert r.status_code == 400
    finally:
        dep.close()
