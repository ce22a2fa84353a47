"""``python -m dynamo.global_router`` end to end: two pools (each mocker workers behind a standalone
router in its own namespace), the global router and the frontend, driven by the openai client.

Two global routers share the pools: ``dynamo`` (priority retry on, default TTFT target 100 ms, metrics
on DYN_SYSTEM_PORT) behind one frontend, ``strict`` (no retry, no defaults) behind another.
"""

from __future__ import annotations

import json
import re
import signal
import time

import httpx
import openai
import pytest

from dynamo.runtime import DistributedRuntime
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import async_wait_for, free_port, wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"


def agg_config(retry: bool) -> dict:
    return {
        "mode": "agg", "enable_priority_retry": retry, "num_agg_pools": 2,
        "agg_pool_dynamo_namespaces": ["pool_fast", "pool_slow"],
        "agg_pool_selection_strategy": {
            # TTFT target below 500 ms -> pool_fast, from 500 ms -> pool_slow; one ITL bucket.
            "ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 2,
            "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 1,
            "agg_pool_mapping": [[0], [1]],
            "priority_overrides": [{"min_priority": 10, "max_priority": 20, "target_pool": 0}],
        },
    }


class Stack:
    def __init__(self) -> None:
        self.dep = new_deployment()
        self.metrics_port = free_port()
        self.strict_port = free_port()
        root = self.dep.logdir.parent
        self.routers = {}
        for pool in ("pool_fast", "pool_slow"):
            self.dep.mocker("--namespace", pool, "--block-size", "16", "--speedup-ratio", "100",
                            name=f"mocker_{pool}")
            self.routers[pool] = self.dep.spawn(f"router_{pool}", "-m", "dynamo.router", "--namespace", pool,
                                                "--endpoint", f"{pool}.backend.generate", "--block-size", "16")
        for name, retry in (("dynamo", True), ("strict", False)):
            cfg = root / f"{name}.json"
            cfg.write_text(json.dumps(agg_config(retry)))
            extra = ["--default-ttft-target-ms", "100"] if name == "dynamo" else []
            env = {"DYN_SYSTEM_PORT": str(self.metrics_port)} if name == "dynamo" else {}
            self.dep.spawn(f"global_router_{name}", "-m", "dynamo.global_router", "--namespace", name, "--config",
                           str(cfg), "--model-name", MODEL, "--model-path", str(QWEN), *extra, env=env)
        self.dep.start_frontend("--namespace", "dynamo")
        self.dep.spawn("frontend_strict", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port",
                       str(self.strict_port), "--namespace", "strict")
        self.dep.wait_models({MODEL}, timeout=60)
        self.strict_url = f"http://127.0.0.1:{self.strict_port}"
        wait_for(lambda: _models(self.strict_url) == [MODEL], 60, what="the strict frontend's model")
        self.client = openai.OpenAI(base_url=self.dep.url + "/v1", api_key="x", max_retries=0, timeout=30)
        self.strict = openai.OpenAI(base_url=self.strict_url + "/v1", api_key="x", max_retries=0, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
            if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                return float(m.group(2))
        return 0.0


def _models(url: str) -> list[str]:
    try:
        return [m["id"] for m in httpx.get(url + "/v1/models", timeout=2).json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    try:
        yield s
    finally:
        s.dep.close()


def chat(client: openai.OpenAI, nvext: dict | None = None, stream: bool = False):
    body = {"nvext": nvext} if nvext else None
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=3, stream=stream,
        extra_body=body)


def served_pool(raw) -> dict:
    routing = json.loads(raw.headers["x-dynamo-routing"])
    (pool,) = routing["global_router"]["pools"]
    return pool


def test_agg_mode_routes_by_sla_targets(stack):
    raw = chat(stack.client, {"router": {"ttft_target": 50, "itl_target": 20}})
    pool = served_pool(raw)
    assert (pool["type"], pool["namespace"], pool["inputs"]) == ("agg", "pool_fast", {"ttft_ms": 50, "itl_ms": 20})
    resp = raw.parse()
    assert resp.choices[0].message.content
    # A unary response carries the same explanation in its body.
    assert resp.model_extra["nvext"]["routing"]["global_router"]["pools"][0]["namespace"] == "pool_fast"

    assert served_pool(chat(stack.client, {"router": {"ttft_target": 900}}))["namespace"] == "pool_slow"
    # No target: the router's --default-ttft-target-ms (100) -> pool_fast; the strict router has no
    # default: the grid's midpoint (500 ms) -> pool_slow.
    assert served_pool(chat(stack.client))["inputs"]["ttft_ms"] == 100
    assert served_pool(chat(stack.client))["namespace"] == "pool_fast"
    assert served_pool(chat(stack.strict))["namespace"] == "pool_slow"
    # A priority override beats the grid.
    over = served_pool(chat(stack.client, {"router": {"ttft_target": 900}, "agent_hints": {"priority": 15}}))
    assert (over["namespace"], over["grid_pool"], over["priority"]) == ("pool_fast", 1, 15)
    # Streaming responses say it in the header.
    raw_stream = chat(stack.client, {"router": {"ttft_target": 700}}, stream=True)
    assert served_pool(raw_stream)["namespace"] == "pool_slow"
    assert "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices)

    # Counted per pool: fast served 50 ms, two defaults and the override; slow served 900 and the stream.
    # (The last request's count may land a moment after its response: wait for it.)
    wait_for(lambda: stack.metric("dynamo_global_router_requests_total", pool="pool_slow", status="success") == 2,
             10, what="pool_slow's count")
    assert stack.metric("dynamo_global_router_requests_total", pool="pool_fast", status="success") == 4
    assert stack.metric("dynamo_global_router_pool_ttft_seconds_count", pool="pool_fast") == 4
    assert stack.metric("dynamo_global_router_pool_ttft_target_seconds_count", pool="pool_slow") == 2
    assert stack.metric("dynamo_global_router_selection_seconds_count", pool_type="agg") == 6


async def test_each_prompt_reaches_the_pool_the_grid_names(stack, monkeypatch):
    """Checked at the pools: each prompt's KV blocks are cached in the named pool (its router's index,
    fed by the workers' KV events) and not in the other."""
    prompts = {}
    for n, (pool, ttft) in enumerate((("pool_fast", 50), ("pool_slow", 900))):
        prompt = list(range(20_000 + 1000 * n, 20_000 + 1000 * n + 64))
        raw = stack.client.completions.with_raw_response.create(
            model=MODEL, prompt=prompt, max_tokens=2, extra_body={"nvext": {"router": {"ttft_target": ttft}}})
        assert served_pool(raw)["namespace"] == pool
        prompts[pool] = prompt
    monkeypatch.setenv("DYN_FILE_KV", stack.dep.env["DYN_FILE_KV"])
    rt = await DistributedRuntime.create("file")
    try:
        probes = {pool: await rt.endpoint(f"dyn://{pool}.router.best_worker_id").client() for pool in prompts}

        async def cached(pool: str, prompt: list[int]) -> int:
            answer = await anext(aiter(await probes[pool].round_robin({"token_ids": prompt})))
            return answer["overlap_blocks"]

        for pool, prompt in prompts.items():
            await async_wait_for(lambda pool=pool, prompt=prompt: cached(pool, prompt), 15,
                                 what=f"the prompt cached in {pool}")
            other = next(p for p in prompts if p != pool)
            assert await cached(other, prompt) == 0
    finally:
        await rt.shutdown(grace_period=0)


def test_a_dead_pool_router_fails_over_or_gets_503_without_hanging(stack):
    stack.routers["pool_slow"].send_signal(signal.SIGKILL)
    stack.routers["pool_slow"].wait(10)
    for _ in range(3):  # the first finds the connection gone, the next ones find the instance set aside
        t0 = time.monotonic()
        pool = served_pool(chat(stack.client, {"router": {"ttft_target": 900}}))
        assert time.monotonic() - t0 < 10
        assert (pool["namespace"], pool["selected_pool"]) == ("pool_fast", 1)
        assert pool["failed"][0]["namespace"] == "pool_slow"
    assert stack.metric("dynamo_global_router_priority_retries_total", from_pool="pool_slow", to_pool="pool_fast") == 3

    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            chat(stack.strict, {"router": {"ttft_target": 900}})
        assert time.monotonic() - t0 < 10
        assert info.value.status_code == 503
        assert "agg pool 1 (pool_slow) cannot serve the request" in info.value.message
    # The healthy pool is unaffected.
    assert served_pool(chat(stack.strict, {"router": {"ttft_target": 50}}))["namespace"] == "pool_fast"
