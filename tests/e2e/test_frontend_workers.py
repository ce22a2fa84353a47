"""``--num-workers``: several frontend processes on one port (SO_REUSEPORT), KV routing kept consistent
between them by router replica sync, all stopped by one SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.deploy import Deployment, new_deployment
from tests.support.procs import port_open, wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux-only")]

MODEL = "Qwen3-0.6B"
BS = 16
WORKERS = 2


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _scrape(url: str) -> tuple[str, str]:
    """/metrics on a fresh connection: (the answering worker's index, the exposition text)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("dynamo_frontend_worker_info{"):
            return line.split('worker="', 1)[1].split('"', 1)[0], text
    raise AssertionError("no dynamo_frontend_worker_info in a --num-workers process's /metrics")


def _per_worker(url: str, prefix: str, probes: int = 40) -> dict[str, float]:
    """Sum of the series starting with ``prefix`` as each worker reports it. SO_REUSEPORT hashes each new
    connection's address, so ``probes`` fresh connections reach every worker (all on one: 2**-39)."""
    seen: dict[str, float] = {}
    for _ in range(probes):
        worker, text = _scrape(url)
        seen[worker] = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))
    return seen


def _route(url: str, prompt: list[int], max_tokens: int = 2) -> dict:
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for _ in r.iter_lines():
            pass
        return json.loads(r.headers["x-dynamo-routing"])


def _group(dep: Deployment) -> list[int]:
    assert dep.frontend is not None
    return wait_for(lambda: len(kids := _children(dep.frontend.pid)) == WORKERS and kids, 30,
                    what=f"{WORKERS} frontend worker processes")


@pytest.fixture
def dep():
    d = new_deployment()
    try:
        d.mocker("--num-workers", "4", "--block-size", str(BS), "--speedup-ratio", "2")
        d.start_frontend("--router-mode", "kv", "--num-workers", str(WORKERS))
        d.wait_models({MODEL})
        yield d
    finally:
        d.close()


def test_workers_share_the_port_and_serve_the_openai_client(dep: Deployment) -> None:
    assert len(_group(dep)) == WORKERS
    n = 40

    def chat(i: int) -> str:
        # a client per request: a new connection each, so the kernel spreads them over the workers
        with openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0) as client:
            out = client.chat.completions.create(model=MODEL, max_tokens=4,
                                                 messages=[{"role": "user", "content": f"hello {i}"}])
        return out.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(chat, range(n)))
    assert len(answers) == n and all(answers)
    served = _per_worker(dep.url, 'dynamo_frontend_requests_total{')
    # every worker answered some of them, and each request was served (and counted) exactly once
    assert sorted(served) == [str(i) for i in range(WORKERS)], served
    assert all(v > 0 for v in served.values()) and sum(served.values()) == n, served


def test_kv_routing_is_consistent_across_workers(dep: Deployment) -> None:
    _group(dep)
    # Prefix index: each worker builds it from the mockers' KV events, so a cached prompt routes to
    # the worker holding it whichever frontend process takes the connection.
    prompt = list(range(9000, 9096))  # 6 blocks
    first = _route(dep.url, prompt)

    def all_agree() -> bool:
        decisions = [_route(dep.url, prompt) for _ in range(12)]
        return all(d["worker_id"] == first["worker_id"] and d["overlap_blocks"] == 6 for d in decisions)

    wait_for(all_agree, 30, interval=0.2, what="every frontend worker to route the cached prompt to its worker")

    # Active load (replica sync): a request booked by one process shows in every process's view. Each
    # builds its router (and joins the sync topic) on discovery, and ZMQ joins are asynchronous: keep
    # booking long requests until one is seen by both.
    blocks = "dynamo_component_router_active_decode_blocks{"
    mirrored = False
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        while not mirrored and time.monotonic() < deadline:
            long_one = pool.submit(_route, dep.url, list(range(500, 564)), 200)
            while not long_one.done() and not mirrored:
                seen = _per_worker(dep.url, blocks, probes=16)
                mirrored = len(seen) == WORKERS and all(v >= 4 for v in seen.values())
            long_one.result(timeout=60)
    assert mirrored, "the frontend workers never all saw one request's booking"
    wait_for(lambda: (seen := _per_worker(dep.url, blocks, probes=16)) and len(seen) == WORKERS
             and not any(seen.values()), 20, interval=0.2, what="every worker to see the request freed")


def test_sigterm_stops_every_worker_and_frees_the_port(dep: Deployment) -> None:
    kids = _group(dep)
    assert dep.frontend is not None
    dep.frontend.send_signal(signal.SIGTERM)
    assert dep.frontend.wait(20) == 0
    assert not any(_alive(k) for k in kids)
    assert not port_open(dep.port)


def test_a_dead_worker_takes_the_group_down(dep: Deployment) -> None:
    kids = _group(dep)
    assert dep.frontend is not None
    os.kill(kids[0], signal.SIGKILL)
    assert dep.frontend.wait(20) != 0
    wait_for(lambda: not _alive(kids[1]), 10, what="the other worker to stop")
    assert "exited with -9; stopping the others" in (dep.logdir / "frontend.log").read_text()


def test_num_workers_errors_are_clear(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "DYN_FILE_KV": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "dynamo.frontend", "--num-workers", "0"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--num-workers must be at least 1" in res.stderr
    res = subprocess.run([sys.executable, "-m", "dynamo.frontend", "--num-workers", "2", "--kserve-grpc-server"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "serves HTTP only" in res.stderr and "Traceback" not in res.stderr
