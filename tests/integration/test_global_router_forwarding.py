"""The global router's handler over the real request plane (in-process ``mem`` store): pool choice,
the disaggregated prefill/decode hand-off, priority retry, the routing explanation and metrics.

Each pool's router is a small stand-in endpoint at ``{pool}.router.generate`` that answers like a
pool would (a prefill result with ``disaggregated_params``; decode tokens reporting the
``prefill_result`` it received), so the test sees exactly what reached which pool.
"""

from __future__ import annotations

import asyncio

import pytest

from dynamo.global_router.__main__ import serve
from dynamo.global_router.args import GlobalRouterArgs
from dynamo.global_router.handler import MARKER
from dynamo.global_router.metrics import GlobalRouterMetrics
from dynamo.global_router.pool_selection import parse_config
from dynamo.runtime import DistributedRuntime, errors
from dynamo.runtime.discovery import registry
from tests.support.deploy import QWEN
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration

DISAGG = {
    "num_prefill_pools": 2, "num_decode_pools": 2,
    "prefill_pool_dynamo_namespaces": ["gr_prefill_a", "gr_prefill_b"],
    "decode_pool_dynamo_namespaces": ["gr_decode_a", "gr_decode_b"],
    "prefill_pool_selection_strategy": {
        "isl_min": 0, "isl_max": 100, "isl_resolution": 2, "ttft_min_ms": 0, "ttft_max_ms": 1000,
        "ttft_resolution": 2, "prefill_pool_mapping": [[0, 1], [1, 1]]},
    "decode_pool_selection_strategy": {
        "context_length_min": 0, "context_length_max": 100, "context_length_resolution": 1, "itl_min_ms": 0,
        "itl_max_ms": 100, "itl_resolution": 2, "decode_pool_mapping": [[0, 1]],
        "priority_overrides": [{"min_priority": 10, "max_priority": 20, "target_pool": 1}]},
}


def agg(retry: bool) -> dict:
    return {
        "mode": "agg", "enable_priority_retry": retry, "num_agg_pools": 3,
        "agg_pool_dynamo_namespaces": ["gr_fast", "gr_mid", "gr_slow"],
        "agg_pool_selection_strategy": {
            "ttft_min_ms": 0, "ttft_max_ms": 300, "ttft_resolution": 3, "itl_min_ms": 0, "itl_max_ms": 100,
            "itl_resolution": 1, "agg_pool_mapping": [[0], [1], [2]]},
    }


async def pool_router(name: str) -> DistributedRuntime:
    rt = await DistributedRuntime.create("mem")

    async def generate(request, ctx):
        if request["stop_conditions"].get("max_tokens") == 1:
            yield {"token_ids": [1], "finish_reason": "length", "disaggregated_params": {"kv_from": name}}
            return
        yield {"token_ids": [11, 12], "extra_args": {"pool": name, "prefill_result": request.get("prefill_result")}}
        yield {"token_ids": [13], "finish_reason": "length"}

    await rt.endpoint(f"dyn://{name}.router.generate").start_serving(generate)
    return rt


def request(n_tokens: int, max_tokens: int = 3, ttft: float | None = None, itl: float | None = None,
            priority: int | None = None) -> dict:
    req: dict = {"model": "Qwen3-0.6B", "token_ids": list(range(n_tokens)), "stop_conditions": {"max_tokens": max_tokens}}
    targets = {k: v for k, v in (("ttft_target", ttft), ("itl_target", itl)) if v is not None}
    if targets:
        req["extra_args"] = targets
    if priority is not None:
        req["routing"] = {"priority": priority}
    return req


async def collect(client, req) -> list[dict]:
    return [item async for item in await client.round_robin(req)]


def pools_of(item: dict) -> list[tuple[str, str]]:
    explained = item["extra_args"]["routing"]["global_router"]
    return [(p["type"], p["namespace"]) for p in explained["pools"]]


async def start_global_router(cfg: dict, namespace: str, **flags) -> tuple[DistributedRuntime, GlobalRouterMetrics]:
    rt = await DistributedRuntime.create("mem")
    args = GlobalRouterArgs()
    args.namespace = namespace
    args.model_name = "Qwen3-0.6B"
    args.model_path = str(QWEN)
    for k, v in flags.items():
        setattr(args, k, v)
    metrics = GlobalRouterMetrics()
    await serve(args, parse_config(cfg), rt, metrics, pool_wait_secs=0.5)
    return rt, metrics


async def test_disagg_prefill_then_decode_through_the_chosen_pools():
    pools = [await pool_router(n) for n in ("gr_prefill_a", "gr_prefill_b", "gr_decode_a", "gr_decode_b")]
    gr, metrics = await start_global_router(DISAGG, "grdis")
    client_rt = await DistributedRuntime.create("mem")
    try:
        # Both legs are registered: a prefill card and a chat/completions card, in the router's namespace.
        cards = {}
        for raw in (await client_rt.store.get_prefix(registry.models_prefix("grdis"))).values():
            entry = registry.decode_model(raw)
            cards[entry.endpoint] = entry.card["model_type"]
        assert cards == {"prefill_generate": ["prefill"], "decode_generate": ["chat", "completions"]}

        prefill = await client_rt.endpoint("dyn://grdis.global_router.prefill_generate").client()
        decode = await client_rt.endpoint("dyn://grdis.global_router.decode_generate").client()
        await prefill.wait_for_instances(5)
        await decode.wait_for_instances(5)

        # Short prompt, tight TTFT -> prefill pool a; long prompt -> b (whatever the target).
        out = await collect(prefill, request(10, max_tokens=1, ttft=100))
        assert pools_of(out[0]) == [("prefill", "gr_prefill_a")]
        params = out[-1]["disaggregated_params"]
        assert params[MARKER]["params"] == {"kv_from": "gr_prefill_a"}
        assert params[MARKER]["prefill"]["namespace"] == "gr_prefill_a"
        out_b = await collect(prefill, request(80, max_tokens=1, ttft=100))
        assert pools_of(out_b[0]) == [("prefill", "gr_prefill_b")]

        # The decode leg carries the prefill result; the decode pool sees the original params, and the
        # explanation names both pools. Tight ITL -> decode pool a.
        dec = request(10, ttft=100, itl=5)
        dec["prefill_result"] = {"disaggregated_params": params}
        items = await collect(decode, dec)
        assert items[0]["extra_args"]["prefill_result"] == {"disaggregated_params": {"kv_from": "gr_prefill_a"}}
        assert pools_of(items[0]) == [("prefill", "gr_prefill_a"), ("decode", "gr_decode_a")]
        assert [t for i in items for t in i["token_ids"]] == [11, 12, 13]
        # Relaxed ITL -> decode pool b; a priority override sends a tight one there too.
        assert pools_of((await collect(decode, request(10, itl=90)))[0])[-1] == ("decode", "gr_decode_b")
        assert pools_of((await collect(decode, request(10, itl=5, priority=15)))[0])[-1] == ("decode", "gr_decode_b")

        done = metrics.requests.labels("prefill", "gr_prefill_a", "success")._value.get()
        assert done == 1
        assert metrics.requests.labels("decode", "gr_decode_b", "success")._value.get() == 2
        text = metrics.render().decode()
        assert 'dynamo_global_router_pool_ttft_seconds_count{pool="gr_prefill_a",pool_type="prefill"} 1.0' in text
        assert 'dynamo_global_router_pool_itl_target_seconds_count{pool="gr_decode_a",pool_type="decode"} 1.0' in text
    finally:
        for rt in [client_rt, gr, *pools]:
            await rt.shutdown(grace_period=0)


async def test_priority_retry_walks_to_faster_pools_and_without_it_the_error_names_the_pool():
    # gr_slow has no router at all; gr_mid's router rejects every request; gr_fast serves.
    fast = await pool_router("gr_fast")
    mid = await DistributedRuntime.create("mem")

    async def reject(request, ctx):
        raise errors.Unavailable("mid pool is draining")
        yield  # pragma: no cover

    await mid.endpoint("dyn://gr_mid.router.generate").start_serving(reject)
    retrying, metrics = await start_global_router(agg(True), "grretry")
    strict, _ = await start_global_router(agg(False), "grstrict")
    client_rt = await DistributedRuntime.create("mem")
    try:
        gen = await client_rt.endpoint("dyn://grretry.global_router.generate").client()
        await gen.wait_for_instances(5)
        items = await collect(gen, request(5, ttft=250))  # grid: gr_slow
        first = items[0]["extra_args"]["routing"]["global_router"]["pools"][0]
        assert (first["namespace"], first["selected_pool"]) == ("gr_fast", 2)
        assert [f["namespace"] for f in first["failed"]] == ["gr_slow", "gr_mid"]
        assert metrics.retries.labels("agg", "gr_slow", "gr_mid")._value.get() == 1
        assert metrics.retries.labels("agg", "gr_mid", "gr_fast")._value.get() == 1

        plain = await client_rt.endpoint("dyn://grstrict.global_router.generate").client()
        await plain.wait_for_instances(5)
        with pytest.raises(errors.Unavailable, match=r"agg pool 1 \(gr_mid\) cannot serve the request"):
            await collect(plain, request(5, ttft=150))
        with pytest.raises(errors.Unavailable, match=r"agg pool 2 \(gr_slow\)"):
            await collect(plain, request(5, ttft=250))
        # A bad target is the request's fault: 400, not a pool failure.
        with pytest.raises(errors.InvalidArgument, match="ttft_target must be a number"):
            await collect(plain, {**request(5), "extra_args": {"ttft_target": "fast"}})
    finally:
        for rt in [client_rt, retrying, strict, fast, mid]:
            await rt.shutdown(grace_period=0)


async def test_a_caller_that_leaves_stops_the_pool_stream():
    pool_rt = await DistributedRuntime.create("mem")
    ended = asyncio.Event()

    async def endless(request, ctx):
        try:
            while not ctx.is_stopped():
                yield {"token_ids": [5]}
                await asyncio.sleep(0.01)
        finally:
            ended.set()

    await pool_rt.endpoint("dyn://gr_fast.router.generate").start_serving(endless)
    cfg = agg(False)
    cfg["agg_pool_selection_strategy"]["agg_pool_mapping"] = [[0], [0], [0]]
    gr, metrics = await start_global_router(cfg, "grleave")
    client_rt = await DistributedRuntime.create("mem")
    try:
        gen = await client_rt.endpoint("dyn://grleave.global_router.generate").client()
        await gen.wait_for_instances(5)
        stream = await gen.round_robin(request(5, max_tokens=10_000))
        it = aiter(stream)
        for _ in range(3):
            await anext(it)
        stream.cancel(kill=True)
        await asyncio.wait_for(ended.wait(), 5)
        await async_wait_for(lambda: metrics.requests.labels("agg", "gr_fast", "cancelled")._value.get() == 1, 5,
                             what="the cancelled count")
    finally:
        for rt in [client_rt, gr, pool_rt]:
            await rt.shutdown(grace_period=0)


async def test_sla_misses_are_counted_against_the_target_that_routed_the_request():
    pool_rt = await DistributedRuntime.create("mem")

    async def slow_first_token(request, ctx):
        await asyncio.sleep(0.05)
        yield {"token_ids": [1]}
        for _ in range(3):
            await asyncio.sleep(0.02)
            yield {"token_ids": [2]}
        yield {"token_ids": [3], "finish_reason": "length"}

    await pool_rt.endpoint("dyn://gr_fast.router.generate").start_serving(slow_first_token)
    cfg = agg(False)
    cfg["agg_pool_selection_strategy"]["agg_pool_mapping"] = [[0], [0], [0]]
    gr, metrics = await start_global_router(cfg, "grsla")
    client_rt = await DistributedRuntime.create("mem")
    try:
        gen = await client_rt.endpoint("dyn://grsla.global_router.generate").client()
        await gen.wait_for_instances(5)

        def misses(sla: str) -> float:
            return metrics.sla_misses.labels("agg", "gr_fast", sla)._value.get()

        await collect(gen, request(5, ttft=10, itl=5))  # 50 ms to the first token, ~20 ms between tokens
        assert (misses("ttft"), misses("itl")) == (1, 1)
        await collect(gen, request(5, ttft=290, itl=90))  # both met
        assert (misses("ttft"), misses("itl")) == (1, 1)
        await collect(gen, request(5))  # no target named: the midpoint routes it but is no promise
        assert (misses("ttft"), misses("itl")) == (1, 1)
        text = metrics.render().decode()
        assert 'dynamo_global_router_pool_itl_seconds_count{pool="gr_fast",pool_type="agg"} 3.0' in text
        # only named targets (request or default) are recorded: the midpoint request is not
        assert 'dynamo_global_router_pool_ttft_target_seconds_count{pool="gr_fast",pool_type="agg"} 2.0' in text
    finally:
        for rt in [client_rt, gr, pool_rt]:
            await rt.shutdown(grace_period=0)
