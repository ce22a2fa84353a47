"""Disagg mode with real processes: two prefill pools and two decode pools of mocker workers (each pool
its own namespace with a standalone router), the global router registering both legs.

Driven through the request plane the way the frontend's prefill router drives it: the prefill leg
(``max_tokens`` 1) to ``prefill_generate``, then the decode leg with the prefill result to
``decode_generate``.
"""

from __future__ import annotations

import json
import time

import pytest

from dynamo.global_router.handler import MARKER
from dynamo.runtime import DistributedRuntime
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"

CONFIG = {
    "num_prefill_pools": 2, "num_decode_pools": 2,
    "prefill_pool_dynamo_namespaces": ["prefill_a", "prefill_b"],
    "decode_pool_dynamo_namespaces": ["decode_a", "decode_b"],
    "prefill_pool_selection_strategy": {
        # prompts under 256 tokens with a TTFT target under 500 ms -> prefill_a; everything else -> prefill_b
        "isl_min": 0, "isl_max": 512, "isl_resolution": 2, "ttft_min_ms": 0, "ttft_max_ms": 1000,
        "ttft_resolution": 2, "prefill_pool_mapping": [[0, 1], [1, 1]]},
    "decode_pool_selection_strategy": {
        # ITL target under 50 ms -> decode_a, else decode_b; priority 10-20 -> decode_a regardless
        "context_length_min": 0, "context_length_max": 4096, "context_length_resolution": 1,
        "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 2, "decode_pool_mapping": [[0, 1]],
        "priority_overrides": [{"min_priority": 10, "max_priority": 20, "target_pool": 0}]},
}


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    try:
        for pool, mode, component in (("prefill_a", "prefill", "prefill"), ("prefill_b", "prefill", "prefill"),
                                      ("decode_a", "decode", "backend"), ("decode_b", "decode", "backend")):
            dep.mocker("--namespace", pool, "--disaggregation-mode", mode, "--block-size", "16",
                       "--speedup-ratio", "100", name=f"mocker_{pool}")
            dep.spawn(f"router_{pool}", "-m", "dynamo.router", "--namespace", pool, "--endpoint",
                      f"{pool}.{component}.generate", "--block-size", "16")
        cfg = dep.logdir.parent / "disagg.json"
        cfg.write_text(json.dumps(CONFIG))
        dep.spawn("global_router", "-m", "dynamo.global_router", "--config", str(cfg), "--model-name", MODEL,
                  "--model-path", str(QWEN))
        yield dep
    finally:
        dep.close()


def request(n_tokens: int, max_tokens: int, base: int = 1000, **extra) -> dict:
    return {"model": MODEL, "token_ids": list(range(base, base + n_tokens)),
            "stop_conditions": {"max_tokens": max_tokens}, **extra}


async def collect(client, req) -> list[dict]:
    return [item async for item in await client.round_robin(req)]


def pools(item: dict) -> list[tuple[str, str]]:
    return [(p["type"], p["namespace"]) for p in item["extra_args"]["routing"]["global_router"]["pools"]]


async def test_prefill_and_decode_legs_land_in_the_pools_the_grids_name(deployment, monkeypatch):
    monkeypatch.setenv("DYN_FILE_KV", deployment.env["DYN_FILE_KV"])
    rt = await DistributedRuntime.create("file")
    try:
        prefill = await rt.endpoint("dyn://dynamo.global_router.prefill_generate").client()
        decode = await rt.endpoint("dyn://dynamo.global_router.decode_generate").client()
        await prefill.wait_for_instances(60)
        await decode.wait_for_instances(60)

        cases = [
            # (prompt tokens, ttft target, itl target, priority) -> (prefill pool, decode pool)
            ((64, 100, 10, None), ("prefill_a", "decode_a")),
            ((64, 900, 90, None), ("prefill_b", "decode_b")),
            ((400, 100, 90, None), ("prefill_b", "decode_b")),  # a long prompt goes to prefill_b anyway
            ((64, 100, 90, 15), ("prefill_a", "decode_a")),  # the priority override picks decode_a
        ]
        for n, ((isl, ttft, itl, priority), (want_prefill, want_decode)) in enumerate(cases):
            extra: dict = {"extra_args": {"ttft_target": ttft, "itl_target": itl}, "base": 10_000 * (n + 1)}
            if priority is not None:
                extra["routing"] = {"priority": priority}
            out = await collect(prefill, request(isl, 1, **extra))
            assert pools(out[0]) == [("prefill", want_prefill)]
            params = out[-1]["disaggregated_params"]
            # The prefill worker's own params ride inside the global router's wrapper.
            assert params[MARKER]["params"]["mocker"]["prompt_tokens"] == isl
            usage = out[-1]["completion_usage"]
            items = await collect(decode, request(isl, 4, prefill_result={
                "disaggregated_params": params, "cached_tokens": usage.get("cached_tokens")}, **extra))
            assert pools(items[0]) == [("prefill", want_prefill), ("decode", want_decode)]
            assert sum(len(i.get("token_ids") or ()) for i in items) == 4
            assert items[-1]["finish_reason"] == "length"

        # Checked at the pools themselves: each prompt's KV blocks are cached in the pools the grids
        # named (their routers' indexers hear it from the workers' KV events), and in no other pool.
        probes = {pool: await rt.endpoint(f"dyn://{pool}.router.best_worker_id").client()
                  for pool in ("prefill_a", "prefill_b", "decode_a", "decode_b")}

        async def cached(pool: str, prompt: list[int]) -> int:
            answer = await anext(aiter(await probes[pool].round_robin({"token_ids": prompt})))
            return answer["overlap_blocks"]

        for n, ((isl, *_), wanted) in enumerate(cases):
            prompt = request(isl, 1, base=10_000 * (n + 1))["token_ids"]
            for pool in wanted:
                await async_wait_for(lambda pool=pool, prompt=prompt: cached(pool, prompt), 15,
                                     what=f"case {n}'s prompt cached in {pool}")
            for pool in set(probes) - set(wanted):
                assert await cached(pool, prompt) == 0, (n, pool)
    finally:
        await rt.shutdown(grace_period=0)


def test_through_the_frontend_each_response_names_both_pools(deployment):
    """The frontend's prefill router sends the prefill leg to the global router's prefill card and the
    decode leg to its decode card; the response names the pool of each leg."""
    import openai

    deployment.start_frontend("--namespace", "dynamo")
    deployment.wait_models({MODEL}, timeout=60)
    client = openai.OpenAI(base_url=deployment.url + "/v1", api_key="x", max_retries=0, timeout=30)

    def ask(nvext: dict, stream: bool = False):
        return client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=stream,
            extra_body={"nvext": nvext})

    def legs(raw) -> list[tuple[str, str]]:
        routing = json.loads(raw.headers["x-dynamo-routing"])
        return [(p["type"], p["namespace"]) for p in routing["global_router"]["pools"]]

    # The prefill router may still be activating right after the model appears: wait until both legs show.
    deadline = time.monotonic() + 30
    while True:
        raw = ask({"router": {"ttft_target": 100, "itl_target": 10}})
        if len(legs(raw)) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert legs(raw) == [("prefill", "prefill_a"), ("decode", "decode_a")]
    body = raw.parse()
    assert body.usage.completion_tokens == 4
    assert [p["namespace"] for p in body.model_extra["nvext"]["routing"]["global_router"]["pools"]] == [
        "prefill_a", "decode_a"]
    assert legs(ask({"router": {"ttft_target": 900, "itl_target": 90}})) == [("prefill", "prefill_b"),
                                                                               ("decode", "decode_b")]
    raw_stream = ask({"router": {"ttft_target": 100, "itl_target": 90}, "agent_hints": {"priority": 15}},
                     stream=True)
    assert legs(raw_stream) == [("prefill", "prefill_a"), ("decode", "decode_a")]
    assert "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices)
