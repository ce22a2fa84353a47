"""``python -m dynamo.planner --environment virtual`` end to end: the throughput loop reads a real
frontend's /metrics, decides, and an orchestrator (VirtualConnectorClient on the same file store) receives
and acknowledges the decision; the planner's own /metrics reports it."""

from __future__ import annotations

import urllib.request

import openai
import pytest

from dynamo.planner.connectors.virtual import VirtualConnectorClient
from dynamo.runtime.discovery.file import FileStore
from tests.support.deploy import new_deployment
from tests.support.procs import SHARED_DATA, async_wait_for, free_port

pytestmark = pytest.mark.e2e

PROFILE = SHARED_DATA / "dynamo" / "profiling" / "H200_TP1P_TP1D_llama3.1-8b-fp8"


async def test_virtual_planner_decides_from_frontend_traffic():
    dep = new_deployment()
    store = FileStore(root=dep.env["DYN_FILE_KV"])
    await store.start()
    metrics_port = free_port()
    try:
        dep.mocker("--speedup-ratio", "100")
        dep.start_frontend()
        dep.wait_models({"Qwen3-0.6B"})
        dep.spawn("planner", "-m", "dynamo.planner", "--environment", "virtual", "--mode", "agg",
                  "--backend", "mocker", "--profile-results-dir", str(PROFILE), "--metrics-source", "frontend",
                  "--frontend-metrics-url", dep.url + "/metrics", "--adjustment-interval", "1",
                  "--load-predictor", "kalman", "--metrics-port", str(metrics_port), "--namespace", "dynamo")
        client = openai.AsyncOpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0)
        for i in range(10):
            await client.completions.create(model="Qwen3-0.6B", prompt=[i, 1, 2, 3], max_tokens=8)
        await client.close()
        orchestrator = VirtualConnectorClient(store, "dynamo")
        decision = await orchestrator.wait(timeout=30)
        assert decision.decision_id >= 1
        assert decision.replicas == {"decode": 1}  # the 8B-on-H200 profile serves this trickle with one engine
        await orchestrator.complete(decision)

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
                    return resp.read().decode()
            except OSError:
                return ""

        text = await async_wait_for(
            lambda: (t := scrape()) and 'dynamo_planner_observed{quantity="requests"}' in t and t, 30,
            0.2, what="the planner's metrics")
        assert 'dynamo_planner_decisions_total{applied="true",direction="up",pool="decode",source="throughput"} 1.0' \
            in text
        assert 'dynamo_planner_desired_replicas{pool="decode"} 1.0' in text
    finally:
        await store.close()
        dep.close()
