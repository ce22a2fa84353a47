"""The planner's traffic observation against a real frontend + mocker: straight from ``/metrics`` and
through a real Prometheus server (Debian's package) scraping that frontend."""

from __future__ import annotations

import math

import openai
import pytest

from dynamo.planner.traffic import FrontendScrapeTraffic, PrometheusTraffic
from dynamo.runtime.errors import Unavailable
from tests.support.deploy import new_deployment
from tests.support.procs import async_wait_for, free_port
from tests.support.prometheus import prometheus_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

PROMPTS = ["Tell me about prefill.", "And decode, in detail please, with examples of batching."]


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "50")
        dep.start_frontend()
        dep.wait_models({"Qwen3-0.6B"})
        yield dep
    finally:
        dep.close()


async def send(dep, n: int, offset: int = 0) -> list[tuple[int, int]]:
    """n chat requests; their (prompt_tokens, completion_tokens) as the frontend reported them."""
    client = openai.AsyncOpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0)
    out = []
    try:
        for i in range(n):
            resp = await client.chat.completions.create(
                model="Qwen3-0.6B", messages=[{"role": "user", "content": PROMPTS[(i + offset) % 2]}],
                max_tokens=5 + (i + offset) % 2 * 10)
            out.append((resp.usage.prompt_tokens, resp.usage.completion_tokens))
    finally:
        await client.close()
    return out


async def test_frontend_scrape_counts_each_interval_exactly(deployment):
    src = FrontendScrapeTraffic(deployment.url + "/metrics")
    try:
        await src.observe(1.0)  # baseline
        usage = await send(deployment, 6)
        stats = await src.observe(1.0)
        assert stats.num_requests == 6
        assert stats.isl == pytest.approx(sum(u[0] for u in usage) / 6)
        assert stats.osl == pytest.approx(sum(u[1] for u in usage) / 6)
        assert stats.ttft_s > 0 and stats.itl_s > 0 and stats.request_duration_s >= stats.ttft_s
        idle = await src.observe(1.0)
        assert idle.num_requests == 0 and math.isnan(idle.isl)
        filtered = FrontendScrapeTraffic(deployment.url + "/metrics", model="no-such-model")
        await filtered.observe(1.0)
        await send(deployment, 1)
        assert (await filtered.observe(1.0)).num_requests == 0
        await filtered.close()
    finally:
        await src.close()


async def test_unreachable_sources_raise_unavailable():
    port = free_port()
    for src in (FrontendScrapeTraffic(f"http://127.0.0.1:{port}/metrics"),
                PrometheusTraffic(f"http://127.0.0.1:{port}")):
        with pytest.raises(Unavailable, match="unreachable"):
            await src.observe(10)
        await src.close()


async def test_prometheus_queries_match_the_traffic(deployment, prometheus_factory):  # noqa: F811
    prom = prometheus_factory([f"127.0.0.1:{deployment.port}"])
    src = PrometheusTraffic(prom.url, model="Qwen3-0.6B")
    try:
        await async_wait_for(lambda: prom.targets_up(), 30, 0.2, what="the frontend target to be up")
        # The counter's first scraped value is the baseline increase() counts from: make it exist first.
        await send(deployment, 2)

        def requests_seen() -> float:
            r = prom.query('sum(dynamo_frontend_requests_total{model="Qwen3-0.6B"})')
            return float(r[0]["value"][1]) if r else 0.0

        before = await async_wait_for(requests_seen, 30, 0.2, what="prometheus to scrape the first requests")
        usage = await send(deployment, 8)
        await async_wait_for(lambda: requests_seen() >= before + 8, 30, 0.2, what="prometheus to scrape the rest")

        def samples() -> int:
            r = prom.query('count_over_time(dynamo_frontend_requests_total{model="Qwen3-0.6B"}[120s])')
            return int(r[0]["value"][1]) if r else 0

        # increase() extrapolates past each end of the samples it has (a few scrape intervals' worth of
        # rate at most); ratios of two increases cancel it.
        await async_wait_for(lambda: samples() >= 11, 30, 0.2, what="ten scrapes of the counter")
        stats = await src.observe(120)
        assert 8 <= stats.num_requests <= 8 * 1.5
        # The first two are in the baseline sample, so the averages are the eight's.
        assert stats.isl == pytest.approx(sum(u[0] for u in usage) / 8, rel=0.02)
        assert stats.osl == pytest.approx(sum(u[1] for u in usage) / 8, rel=0.02)
        assert stats.ttft_s > 0 and stats.itl_s > 0
        with pytest.raises(Unavailable, match="query failed"):
            await src.query("sum(")
    finally:
        await src.close()

