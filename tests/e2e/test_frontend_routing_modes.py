"""Non-KV routing modes and direct routing by header, checked by which worker served each request
(the ``x-dynamo-worker-instance-id`` response header), not just by status codes."""

from __future__ import annotations

import collections
import itertools
import threading

import httpx
import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

BODY = {"model": "Qwen3-0.6B", "prompt": "hello", "max_tokens": 2}
SERVED = "x-dynamo-worker-instance-id"


def start(mode: str, *extra: str):
    dep = new_deployment()
    dep.mocker("--num-workers", "2", "--speedup-ratio", "100")
    dep.start_frontend("--router-mode", mode, *extra)
    dep.wait_models({"Qwen3-0.6B"})
    _, health = dep.get("/health")
    ids = sorted(inst["instance_id"] for inst in health["instances"])
    assert len(ids) == 2, health
    return dep, ids


def served_by(dep, headers: dict[str, str] | None = None) -> int:
    r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30, headers=headers)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text
    return int(r.headers[SERVED])


def test_round_robin_alternates():
    dep, ids = start("round-robin")
    try:
        seq = [served_by(dep) for _ in range(10)]
        assert set(seq) == set(ids) and all(a != b for a, b in itertools.pairwise(seq)), seq
    finally:
        dep.close()


def test_random_uses_every_worker_without_alternating():
    dep, ids = start("random")
    try:
        seq = [served_by(dep) for _ in range(40)]
        counts = collections.Counter(seq)
        # 40 fair coin flips: a worker left out, or strict alternation, each has odds of 2^-39.
        assert set(counts) == set(ids), counts
        assert any(a == b for a, b in itertools.pairwise(seq)), seq
    finally:
        dep.close()


@pytest.mark.parametrize("mode", ["least-loaded", "power-of-two"])
def test_load_aware_modes_avoid_the_loaded_worker(mode):
    # With two workers, power-of-two compares both: like least-loaded, it must pick the idle one.
    dep, ids = start(mode)
    try:
        opened = threading.Event()
        release = threading.Event()
        holder: dict[str, int] = {}

        def long_request() -> None:
            body = {**BODY, "max_tokens": 30000, "stream": True}
            with httpx.stream("POST", dep.url + "/v1/completions", json=body, timeout=60) as r:
                holder["iid"] = int(r.headers[SERVED])
                opened.set()
                release.wait(30)  # hold the request open (in flight) until the short ones are done

        t = threading.Thread(target=long_request)
        t.start()
        try:
            assert opened.wait(30)
            busy = holder["iid"]
            idle = next(i for i in ids if i != busy)
            seq = [served_by(dep) for _ in range(8)]
            assert seq == [idle] * 8, (busy, seq)
        finally:
            release.set()
            t.join(30)
        assert not t.is_alive()
    finally:
        dep.close()


def test_direct_routing_by_header_serves_on_the_named_instance():
    dep, ids = start("direct")
    try:
        for iid in [*ids, *reversed(ids), ids[0]]:
            assert served_by(dep, {"x-worker-instance-id": str(iid)}) == iid
        # Without the header, direct mode cannot choose: a clear 400.
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30)
        assert r.status_code == 400 and "x-worker-instance-id" in r.json()["error"]["message"]
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30, headers={"x-worker-instance-id": "12345"})
        assert r.status_code == 404
        r = httpx.post(dep.url + "/v1/completions", json=BODY, timeout=30, headers={"x-worker-instance-id": "zz!"})
        assert r.status_code == 400
    finally:
        dep.close()


def test_direct_routing_header_needs_opt_in_outside_direct_mode():
    dep, ids = start("round-robin", "--enable-direct-routing-header")
    try:
        # Round-robin would alternate; the header pins every request to the named instance.
        for iid in (ids[1], ids[1], ids[1], ids[0], ids[0]):
            assert served_by(dep, {"x-worker-instance-id": str(iid)}) == iid
    finally:
        dep.close()
