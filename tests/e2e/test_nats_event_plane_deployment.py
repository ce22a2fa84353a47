"""A cluster-style deployment: KV events over NATS, and a NATS restart under steady load."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.integration.nats_fixtures import nats_server  # noqa: F401  (session fixture)
from tests.support.deploy import new_deployment
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e


def _applied(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith('dynamo_component_kv_cache_events_applied_total{event_type="stored",status="ok"}'))


def test_kv_events_over_nats_survive_a_server_restart(nats_server):  # noqa: F811
    dep = new_deployment({"DYN_EVENT_PLANE": "nats", "NATS_SERVER": nats_server.url})
    try:
        dep.mocker("--num-workers", "2", "--block-size", "16", "--speedup-ratio", "50")
        dep.start_frontend("--router-mode", "kv")
        dep.wait_models({"Qwen3-0.6B"})
        body = {"model": "Qwen3-0.6B", "prompt": list(range(3000, 3064)), "max_tokens": 4}

        # Every attempt ends in exactly one of ok / failed; a load thread that dies is a failure too.
        ok, failed, attempts, finished, stop = [0], [], [0], [], threading.Event()
        lock = threading.Lock()

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    with lock:
                        attempts[0] += 1
                    try:
                        r = c.post(dep.url + "/v1/completions", json={**body, "prompt": [i % 5000 + 100] * 64})
                    except Exception as exc:  # counted and asserted on below
                        with lock:
                            failed.append(repr(exc))
                        continue
                    with lock:
                        if r.status_code == 200:
                            ok[0] += 1
                        else:
                            failed.append(r.status_code)
            finished.append(True)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: _applied(dep.url) > 0, 20, what="KV events over NATS")
            nats_server.restart()
            before = ok[0]
            wait_for(lambda: ok[0] > before + 30, 30, what="requests after the NATS restart")
            # Events flow again once the publishers and the router have reconnected.
            applied = _applied(dep.url)
            wait_for(lambda: _applied(dep.url) > applied, 30, what="KV events after the restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads) and len(finished) == len(threads)
        assert failed == [] and ok[0] == attempts[0] > 30
        # KV routing keeps using the index: a repeated prompt finds its cached blocks.
        first = httpx.post(dep.url + "/v1/completions", json=body, timeout=30)
        assert first.status_code == 200
        wait_for(lambda: _overlap(dep.url, body) == 4, 10, what="the prompt's blocks to be indexed")
    finally:
        dep.close()


def _overlap(url: str, body: dict) -> int:
    import json

    r = httpx.post(url + "/v1/completions", json=body, timeout=30)
    return json.loads(r.headers["x-dynamo-routing"])["overlap_blocks"]
