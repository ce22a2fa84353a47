"""KV-aware routing end to end: mocker workers publishing KV events, the frontend in ``kv`` mode."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import random
import statistics
import time

import httpx
import pytest

from tests.support.deploy import new_deployment
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
BS = 16


def route(url: str, prompt: list[int], max_tokens: int = 2) -> tuple[dict, float]:
    """Send a streaming completion; return the routing decision header and the client-side TTFT."""
    t0 = time.perf_counter()
    ttft = None
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and ttft is None and line != "data: [DONE]":
                ttft = time.perf_counter() - t0
        decision = json.loads(r.headers["x-dynamo-routing"])
    return decision, ttft or 0.0


def kv_deployment(*mocker_args: str, frontend_args: tuple[str, ...] = ()):
    dep = new_deployment()
    dep.mocker("--num-workers", "4", "--block-size", str(BS), *mocker_args)
    dep.start_frontend("--router-mode", "kv", *frontend_args)
    dep.wait_models({MODEL})
    return dep


def test_no_hot_spotting_and_shared_prefix_spreads():
    dep = kv_deployment("--speedup-ratio", "5")
    try:
        rng = random.Random(1)
        prompts = [[rng.randrange(100, 50_000) for _ in range(64)] for _ in range(200)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            decisions = [d for d, _ in pool.map(lambda p: route(dep.url, p), prompts)]
        counts = collections.Counter(d["worker_id"] for d in decisions)
        assert len(counts) == 4
        assert all(37 <= c <= 63 for c in counts.values()), counts  # within +-25% of 50

        # A shared system prompt: the worker holding it is cheapest (16 of 18 blocks cached) until
        # its own load outweighs that; with 16 requests in flight the excess must spill to the others.
        system = [rng.randrange(100, 50_000) for _ in range(256)]
        shared = [system + [rng.randrange(100, 50_000) for _ in range(32)] for _ in range(96)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            decisions = [d for d, _ in pool.map(lambda p: route(dep.url, p, 48), shared)]
        counts = collections.Counter(d["worker_id"] for d in decisions)
        assert len(counts) >= 2 and max(counts.values()) <= 0.85 * len(shared), counts
        # Once loaded, the shared prefix is found in the cache of whichever worker serves it.
        assert statistics.mean(d["overlap_blocks"] for d in decisions[32:]) >= 256 // BS - 1
    finally:
        dep.close()


def test_multi_turn_conversations_return_to_their_worker():
    dep = kv_deployment("--speedup-ratio", "50")
    try:
        rng = random.Random(2)
        convs = [[rng.randrange(100, 50_000) for _ in range(48)] for _ in range(10)]
        last: dict[int, int] = {}
        same = total = 0
        for _turn in range(5):
            for i, conv in enumerate(convs):
                decision, _ = route(dep.url, conv, max_tokens=8)
                if i in last:
                    total += 1
                    same += decision["worker_id"] == last[i]
                    assert decision["overlap_blocks"] >= 1
                last[i] = decision["worker_id"]
                conv.extend(rng.randrange(100, 50_000) for _ in range(24))
        assert same / total >= 0.9, (same, total)
        metrics = httpx.get(dep.url + "/metrics", timeout=5).text
        assert 'dynamo_component_kv_cache_events_applied_total{event_type="stored",status="ok"}' in metrics
    finally:
        dep.close()


def _ttft_p50(mode: str, prompts: list[list[int]]) -> float:
    dep = new_deployment()
    try:
        dep.mocker("--num-workers", "4", "--block-size", str(BS), "--speedup-ratio", "1",
                   "--num-gpu-blocks-override", "300")
        dep.start_frontend("--router-mode", mode)
        dep.wait_models({MODEL})
        ttfts = []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _, ttft in pool.map(lambda p: _plain(dep.url, p), prompts):
                ttfts.append(ttft)
        return statistics.median(ttfts[len(prompts) // 4:])
    finally:
        dep.close()


def _plain(url: str, prompt: list[int]) -> tuple[None, float]:
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": prompt, "max_tokens": 2, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                return None, time.perf_counter() - t0
    raise AssertionError("no data")


def test_kv_routing_beats_round_robin_on_shared_prefixes():
    rng = random.Random(3)
    # 4 long prefixes; each worker's cache (300 blocks = 4800 tokens) holds one of them. At speedup 1
    # an uncached 4000-token prefill costs ~80 ms more than a cached one, far above HTTP overheads.
    prefixes = [[rng.randrange(100, 50_000) for _ in range(4000)] for _ in range(4)]
    prompts = [rng.choice(prefixes) + [rng.randrange(100, 50_000) for _ in range(16)] for _ in range(40)]
    kv = _ttft_p50("kv", prompts)
    rr = _ttft_p50("round-robin", prompts)
    print(f"TTFT p50 kv {kv * 1000:.1f} ms vs round-robin {rr * 1000:.1f} ms")
    assert kv < 0.8 * rr, (kv, rr)


def test_approx_mode_with_workers_that_publish_no_events():
    from tests.support.deploy import QWEN
    from tests.support.procs import free_port

    dep = new_deployment()
    try:
        # The echo worker publishes no KV events at all.
        dep.spawn("echo", "-m", "dynamo.echo", "--model-path", str(QWEN), "--delay-ms", "0",
                  "--kv-cache-block-size", str(BS))
        dep.start_frontend("--router-mode", "kv", "--no-kv-events", "--router-ttl", "1.0")
        prune_port = free_port()
        dep.spawn("frontend-prune", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port",
                  str(prune_port), "--router-mode", "kv", "--no-kv-events", "--router-max-tree-size", "40")
        dep.wait_models({MODEL})
        prune_url = f"http://127.0.0.1:{prune_port}"
        wait_for(lambda: _serves(prune_url), 30, what="second frontend")

        rng = random.Random(4)
        first = [rng.randrange(100, 50_000) for _ in range(64)]
        assert route(dep.url, first)[0]["overlap_blocks"] == 0
        booked = time.monotonic()
        assert route(dep.url, first)[0]["overlap_blocks"] == 4  # predicted from its own decision
        # TTL: 1 s after the last booking the prediction is gone.
        wait_for(lambda: time.monotonic() - booked > 1.3, 5, what="the router TTL to pass")
        assert route(dep.url, first)[0]["overlap_blocks"] == 0

        # Pruning: 80 fresh blocks against a 40-block cap evict the oldest entries first.
        assert route(prune_url, first)[0]["overlap_blocks"] == 0
        assert route(prune_url, first)[0]["overlap_blocks"] == 4
        for _ in range(20):
            route(prune_url, [rng.randrange(100, 50_000) for _ in range(64)])
        assert route(prune_url, first)[0]["overlap_blocks"] == 0
    finally:
        dep.close()


def _serves(url: str) -> bool:
    try:
        return bool(httpx.get(url + "/v1/models", timeout=1).json()["data"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def _active_blocks(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("dynamo_component_router_active_decode_blocks{"))


def test_router_replica_sync_shares_active_load():
    from tests.support.procs import free_port

    dep = new_deployment()
    try:
        dep.mocker("--num-workers", "2", "--block-size", str(BS), "--speedup-ratio", "2")
        dep.start_frontend("--router-mode", "kv", "--router-replica-sync")
        other_port = free_port()
        dep.spawn("frontend-b", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(other_port),
                  "--router-mode", "kv", "--router-replica-sync")
        other = f"http://127.0.0.1:{other_port}"
        dep.wait_models({MODEL})
        wait_for(lambda: _serves(other), 30, what="second frontend")
        # B builds its router on its first request; replicas that join late converge on later bookings,
        # so keep booking long requests through A until B mirrors one (ZMQ joins are asynchronous).
        route(other, [5] * 16)
        mirrored = False
        deadline = time.monotonic() + 30
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            while not mirrored and time.monotonic() < deadline:
                long_one = pool.submit(route, dep.url, list(range(500, 564)), 200)
                while not long_one.done():
                    if _active_blocks(other) >= 4:  # B never saw this request, yet sees A's 4 blocks
                        mirrored = True
                        break
                    time.sleep(0.05)
                long_one.result(timeout=60)
        assert mirrored, "replica B never mirrored A's booking"
        wait_for(lambda: _active_blocks(other) == 0, 20, what="replica B to mirror the free")
    finally:
        dep.close()


def _metric(url: str, prefix: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_router_started_after_the_worker_recovers_its_cache_from_a_snapshot():
    from tests.support.procs import free_port

    dep = new_deployment()
    try:
        dep.mocker("--num-workers", "2", "--block-size", str(BS), "--speedup-ratio", "50")
        # A first frontend caches a prompt on some worker; its events go to that frontend only.
        dep.start_frontend("--router-mode", "kv")
        dep.wait_models({MODEL})
        prompt = list(range(7000, 7096))  # 6 blocks
        first, _ = route(dep.url, prompt)
        # A router that starts now has seen none of those events: it reads the workers' snapshots.
        late_port = free_port()
        dep.spawn("late", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(late_port),
                  "--router-mode", "kv")
        late = f"http://127.0.0.1:{late_port}"
        wait_for(lambda: _serves(late), 30, what="late frontend")
        route(late, [3] * 16)  # builds the late frontend's router (model engines are built on discovery)
        wait_for(lambda: _metric(late, "dynamo_component_kv_index_recoveries_total") >= 2, 20,
                 what="both workers' snapshots")
        decision, _ = route(late, prompt)
        assert decision["overlap_blocks"] == 6 and decision["worker_id"] == first["worker_id"]
    finally:
        dep.close()
