"""Disaggregated prefill/decode end to end: prefill and decode mocker workers as real processes, the
frontend's prefill router, the official openai client.

What each test can observe from outside: the routing explanation the frontend returns
(``x-dynamo-routing``: the decode choice with each candidate's cached blocks, and the prefill worker),
the frontend's ``dynamo_frontend_disagg_*`` counters, and usage. Decode workers holding a prompt's
blocks show up as that prompt's overlap on them in the next explanation, which the frontend's KV router
computes from the decode workers' own KV events.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.deploy import Deployment, new_deployment
from tests.support.procs import async_wait_for, wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
BS = 16


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def instances(dep: Deployment, component: str) -> list[int]:
    try:
        body = httpx.get(dep.url + "/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [i["instance_id"] for i in body.get("instances", []) if i["component"] == component]


def deploy(*, bootstrap: bool, prefill_workers: int = 1, decode_workers: int = 2, speedup: str = "5",
           frontend: tuple[str, ...] = ("--router-mode", "kv")) -> Deployment:
    dep = new_deployment()
    if prefill_workers:
        start_prefill(dep, prefill_workers, bootstrap=bootstrap, speedup=speedup)
    dep.mocker("--disaggregation-mode", "decode", "--num-workers", str(decode_workers), "--block-size", str(BS),
               "--speedup-ratio", speedup, name="decode")
    dep.start_frontend(*frontend)
    dep.wait_models({MODEL})
    wait_for(lambda: len(instances(dep, "backend")) == decode_workers
             and len(instances(dep, "prefill")) == prefill_workers, timeout=30)
    return dep


def start_prefill(dep: Deployment, n: int = 1, *, bootstrap: bool, speedup: str = "5", name: str = "prefill") -> Any:
    extra = ("--bootstrap-ports", ",".join("0" * n)) if bootstrap else ()
    return dep.mocker("--disaggregation-mode", "prefill", "--num-workers", str(n), "--block-size", str(BS),
                      "--speedup-ratio", speedup, *extra, name=name)


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[openai.OpenAI] = []

    def make(dep: Deployment) -> openai.OpenAI:
        c = openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def complete(client: openai.OpenAI, prompt: list[int], max_tokens: int = 4) -> tuple[Any, dict[str, Any]]:
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=max_tokens)
    return raw.parse(), json.loads(raw.headers["x-dynamo-routing"])


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, 50_000) for _ in range(n)]


@pytest.mark.parametrize("bootstrap", [True, False], ids=["bootstrap", "synchronous"])
def test_every_request_prefills_remotely_and_decode_workers_keep_the_prompt(bootstrap: bool, client_for) -> None:
    dep = deploy(bootstrap=bootstrap)
    try:
        client = client_for(dep)
        [prefill_id] = instances(dep, "prefill")
        rng = random.Random(7)
        path = "bootstrap" if bootstrap else "synchronous"
        for n in range(6):
            prompt = tokens(rng, 100 + 16 * n)
            resp, decision = complete(client, prompt, max_tokens=5)
            assert resp.usage.prompt_tokens == len(prompt) and resp.usage.completion_tokens == 5
            assert resp.choices[0].finish_reason == "length"
            assert decision["prefill"]["mode"] == "remote" and decision["prefill"]["worker_id"] == prefill_id
            assert decision["prefill"]["path"] == path
            # The same prompt again: the decode worker that served it now holds its full blocks (they
            # arrived by KV transfer and were announced in that worker's KV events).
            full = len(prompt) // BS

            def overlap_on_server(prompt: list[int] = prompt, served: int = decision["worker_id"],
                                  full: int = full) -> bool:
                _, again = complete(client, prompt, max_tokens=1)
                return any(c["worker_id"] == served and c["overlap_blocks"] == full for c in again["candidates"])

            wait_for(overlap_on_server, timeout=10, interval=0.2)
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total", kind=f"remote_{path}") >= 12
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total", kind="aggregated") == 0
    finally:
        dep.close()


def test_enforce_disagg_without_prefill_workers_is_503_at_once(client_for) -> None:
    dep = deploy(bootstrap=False, prefill_workers=0, frontend=("--router-mode", "kv", "--enforce-disagg"))
    try:
        client = client_for(dep)
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model=MODEL, prompt="hello", max_tokens=4)
        assert err.value.status_code == 503 and time.monotonic() - t0 < 5
        assert "temporarily unavailable" in str(err.value)
        # A prefill worker arrives: the same request now succeeds, prefilled remotely.
        start_prefill(dep, bootstrap=False)
        wait_for(lambda: len(instances(dep, "prefill")) == 1, timeout=30)
        resp, decision = complete(client, tokens(random.Random(1), 40))
        assert decision["prefill"]["mode"] == "remote" and resp.usage.completion_tokens == 4
    finally:
        dep.close()


def test_conditional_disagg_prefills_cached_prompts_locally(client_for) -> None:
    dep = deploy(bootstrap=True, decode_workers=1,
                 frontend=("--router-mode", "kv", "--router-conditional-disagg"))
    try:
        client = client_for(dep)
        rng = random.Random(3)
        system = tokens(rng, 320)
        # Fresh: nothing of it is on the decode worker (ratio 1.0 >= 0.7) -> remote.
        _, first = complete(client, system + tokens(rng, 16))
        assert first["prefill"]["mode"] == "remote"
        # Same 320-token prefix + a short new tail: the decode worker holds 20 of 21 blocks -> local.
        wait_for(lambda: complete(client, system + tokens(rng, 16))[1]["prefill"]["mode"] == "local",
                 timeout=10, interval=0.2)
        _, local = complete(client, system + tokens(rng, 16))
        assert local["prefill"]["mode"] == "local" and "effective ISL" in local["prefill"]["reason"]
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total", kind="local") >= 1
        # A long fresh prompt goes remote again.
        _, long_fresh = complete(client, tokens(rng, 600))
        assert long_fresh["prefill"]["mode"] == "remote"
    finally:
        dep.close()


async def _load(dep: Deployment, stop: asyncio.Event, results: list[Any], seed: int) -> None:
    rng = random.Random(seed)
    async with openai.AsyncOpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        while not stop.is_set():
            prompt = tokens(rng, rng.randrange(64, 400))
            try:
                resp = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=24)
                ok = resp.usage.completion_tokens == 24 and resp.usage.prompt_tokens == len(prompt)
                results.append("ok" if ok else f"bad usage {resp.usage}")
            except openai.APIError as exc:
                results.append(f"error {exc}")


@pytest.mark.parametrize("bootstrap", [True, False], ids=["bootstrap", "synchronous"])
async def test_prefill_worker_killed_mid_load_fails_no_request(bootstrap: bool) -> None:
    # Prefills slowed down (speedup 0.5) so that some are in flight when the worker dies.
    dep = deploy(bootstrap=bootstrap, prefill_workers=2, speedup="0.5")
    try:
        prefill_proc = next(p for p in dep.procs if "prefill" in " ".join(map(str, p.args)))
        stop = asyncio.Event()
        results: list[Any] = []
        tasks = [asyncio.create_task(_load(dep, stop, results, seed)) for seed in range(8)]
        await async_wait_for(lambda: len(results) >= 8, timeout=60)
        before = len(results)
        prefill_proc.send_signal(signal.SIGKILL)  # both prefill workers live in this process
        await async_wait_for(lambda: len(results) >= before + 16, timeout=60)
        stop.set()
        await asyncio.gather(*tasks)
        assert results and all(r == "ok" for r in results), [r for r in results if r != "ok"][:5]
        # With every prefill worker gone, requests ran aggregated on the decode workers.
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total", kind="aggregated") >= 1
    finally:
        dep.close()


async def test_prefill_workers_come_and_go_while_serving() -> None:
    dep = deploy(bootstrap=True, prefill_workers=0, speedup="2")
    try:
        stop = asyncio.Event()
        results: list[Any] = []
        tasks = [asyncio.create_task(_load(dep, stop, results, seed)) for seed in range(4)]
        await async_wait_for(lambda: len(results) >= 4, timeout=60)
        url = dep.url

        def kind(k: str) -> float:
            return metric(url, "dynamo_frontend_disagg_prefills_total", kind=k)

        assert kind("remote_bootstrap") == 0
        proc = start_prefill(dep, bootstrap=True, speedup="2")
        await async_wait_for(lambda: kind("remote_bootstrap") >= 4, timeout=60)
        proc.send_signal(signal.SIGTERM)  # graceful: it deregisters, in-flight prefills finish
        await async_wait_for(lambda: not instances(dep, "prefill"), timeout=30)
        # No prefill workers: requests run aggregated on the decode workers, none goes remote.
        remote, done = kind("remote_bootstrap"), len(results)
        await async_wait_for(lambda: len(results) >= done + 8, timeout=60)
        assert kind("remote_bootstrap") == remote
        proc = start_prefill(dep, bootstrap=True, speedup="2", name="prefill2")
        remote = kind("remote_bootstrap")
        await async_wait_for(lambda: kind("remote_bootstrap") >= remote + 4, timeout=60)
        stop.set()
        await asyncio.gather(*tasks)
        assert all(r == "ok" for r in results), [r for r in results if r != "ok"][:5]
    finally:
        dep.close()


def test_direct_prefill_instance_header(client_for) -> None:
    dep = deploy(bootstrap=False, prefill_workers=2, frontend=("--router-mode", "kv",
                                                              "--enable-direct-routing-header"))
    try:
        client = client_for(dep)
        ids = sorted(instances(dep, "prefill"))
        for target in ids:
            raw = client.completions.with_raw_response.create(
                model=MODEL, prompt=tokens(random.Random(target % 1000), 50), max_tokens=2,
                extra_headers={"x-prefill-instance-id": str(target)})
            assert json.loads(raw.headers["x-dynamo-routing"])["prefill"]["worker_id"] == target
        # Query only: both choices come back and nothing runs.
        before = metric(dep.url, "dynamo_frontend_disagg_prefills_total")
        for stream in (False, True):
            r = httpx.post(dep.url + "/v1/completions", timeout=30, json={
                "model": MODEL, "prompt": "where would this go", "max_tokens": 4, "stream": stream,
                "nvext": {"annotations": ["query_instance_id"]}})
            assert r.status_code == 200, r.text
            body = json.loads(r.text.split("data: ")[1]) if stream else r.json()
            choice = body["nvext"]["worker_id"]
            assert choice["prefill_worker_id"] in ids and choice["decode_worker_id"] in instances(dep, "backend")
            assert body["choices"] == []
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total") == before
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                      extra_headers={"x-prefill-instance-id": "12345"})
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                      extra_headers={"x-prefill-instance-id": "not-a-number"})
    finally:
        dep.close()


async def test_decode_worker_killed_mid_stream_migrates() -> None:
    dep = new_deployment()
    try:
        start_prefill(dep, bootstrap=True, speedup="1")
        decode = [dep.mocker("--disaggregation-mode", "decode", "--block-size", str(BS), "--speedup-ratio", "0.3",
                             name=f"decode{i}") for i in range(2)]
        dep.start_frontend("--router-mode", "kv", "--migration-limit", "3")
        dep.wait_models({MODEL})
        await async_wait_for(lambda: len(instances(dep, "backend")) == 2 and len(instances(dep, "prefill")) == 1,
                             timeout=30)
        rng = random.Random(11)
        got: list[int] = []

        async def one(client: openai.AsyncOpenAI) -> str:
            stream = await client.completions.create(model=MODEL, prompt=tokens(rng, 80), max_tokens=48,
                                                     stream=True, stream_options={"include_usage": True})
            text, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    text.append(chunk.choices[0].text)
                    got.append(1)
                if chunk.usage is not None:
                    usage = chunk.usage
            assert usage is not None and usage.completion_tokens == 48
            return "".join(text)

        async with openai.AsyncOpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0,
                                      timeout=120) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(8)]
            await async_wait_for(lambda: len(got) >= 40, timeout=60)  # streams are flowing on both workers
            decode[0].send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks)
        assert metric(dep.url, "dynamo_frontend_model_migration_total") >= 1
    finally:
        dep.close()


def test_client_gone_mid_prefill_orphans_no_transfer_and_leaks_nothing() -> None:
    # Slow prefills (a 4000-token prompt takes ~0.4 s at speedup 0.2) so the client leaves mid-prefill.
    dep = deploy(bootstrap=True, decode_workers=1, speedup="0.2")
    try:
        prompt = tokens(random.Random(5), 4000)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 64, "stream": True}
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream("POST", dep.url + "/v1/completions", json=body, timeout=0.15) as r:
                r.read()
        # The bootstrap prefill was not tied to the client: it ran to the end, and the prefill worker
        # holds (and announced) the prompt's blocks, which the prefill router now sees.
        full = len(prompt) // BS

        def prefill_kept_the_prompt() -> bool:
            q = httpx.post(dep.url + "/v1/completions", timeout=10, json={
                "model": MODEL, "prompt": prompt, "max_tokens": 1, "nvext": {"annotations": ["query_instance_id"]}})
            return q.json()["nvext"]["worker_id"]["prefill"].get("overlap_blocks") == full

        wait_for(prefill_kept_the_prompt, timeout=15, interval=0.2)
        # Nothing is left booked or allocated anywhere once the dust settles.
        wait_for(lambda: metric(dep.url, "dynamo_frontend_worker_kv_used_blocks") == 0
                 and metric(dep.url, "dynamo_frontend_worker_active_decode_blocks") == 0
                 and metric(dep.url, "dynamo_frontend_inflight_requests") == 0, timeout=15, interval=0.2)
        assert metric(dep.url, "dynamo_frontend_disagg_prefills_total", kind="remote_bootstrap") == 1
    finally:
        dep.close()
