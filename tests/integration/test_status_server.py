"""The worker's system status server: readiness transitions (starting, ready, draining), /live, /metrics.

Workers run as real processes with ``DYN_SYSTEM_PORT`` set; probes are plain HTTP GETs, as Kubernetes
and Prometheus send them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dynamo.runtime import DistributedRuntime, errors
from tests.support.deploy import QWEN as QWEN_DIR
from tests.support.procs import async_wait_for, free_port, processes

pytestmark = pytest.mark.integration

WORKER = str(Path(__file__).with_name("runtime_worker.py"))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def test_readiness_follows_startup_serving_and_drain(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    env = {"DYN_SYSTEM_PORT": str(port), "DYN_SYSTEM_HOST": "127.0.0.1",
           "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30"}
    with processes(env) as procs:
        proc = procs.spawn(WORKER, "--store", "file", "--startup-delay", "1.5")
        # Starting: alive, not ready (the engine is still loading; nothing is registered).
        async def live() -> bool:
            return (await aget(port, "/live"))[0] == 200

        await async_wait_for(live, what="status server up", timeout=20)
        status, body = await aget(port, "/health")
        assert status == 503 and json.loads(body)["status"] == "notready"
        assert (await aget(port, "/live"))[0] == 200
        # Ready once the endpoint is served and registered.
        async def ready() -> bool:
            return (await aget(port, "/health"))[0] == 200

        await async_wait_for(ready, what="ready", timeout=20)
        report = json.loads((await aget(port, "/health"))[1])
        assert report["status"] == "ready" and report["endpoints"] == {"generate": "ready"}
        assert set(report["uptime"]) == {"secs", "nanos"}

        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://test.worker.generate").client()
            await client.wait_for_instances(20)
            assert [x["i"] async for x in await client.round_robin({"n": 3})] == [0, 1, 2]
            # Draining: a stream in flight keeps the process up; it must report not ready at once.
            stream = await client.round_robin({"n": 40, "delay": 0.05})
            await stream.__anext__()
            proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                return (await aget(port, "/health"))[0] == 503

            await async_wait_for(not_ready, what="not ready while draining", timeout=5)
            report = json.loads((await aget(port, "/health"))[1])
            assert report["endpoints"] == {"generate": "notready"}
            assert (await aget(port, "/live"))[0] == 200  # alive: a liveness probe must not kill a drain
            assert proc.poll() is None
            rest = [x["i"] async for x in stream]
            assert rest == list(range(1, 40))  # the drain let the stream finish
            assert await asyncio.to_thread(proc.wait, 15) == 0
        finally:
            await rt.shutdown(grace_period=0)


async def test_metrics_count_requests_bytes_errors_and_cancellations(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    with processes({"DYN_SYSTEM_PORT": str(port), "DYN_SYSTEM_HOST": "127.0.0.1"}) as procs:
        procs.spawn(WORKER, "--store", "file")
        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://test.worker.generate").client()
            await client.wait_for_instances(20)
            for _ in range(3):
                assert len([x async for x in await client.round_robin({"n": 5})]) == 5
            bad = await client.round_robin({"n": "many"})
            with pytest.raises(errors.Internal):
                async for _ in bad:
                    pass
            endless = await client.round_robin({"n": 100_000, "delay": 0.01})
            await endless.__anext__()
            endless.cancel()
            labels = 'dynamo_component="worker",dynamo_endpoint="generate",dynamo_namespace="test"'

            async def scraped() -> str | None:
                status, text = await aget(port, "/metrics")
                done = f"dynamo_component_cancellation_total{{{labels}}} 1.0" in text
                return text if status == 200 and done else None

            text = await async_wait_for(scraped, what="cancellation counted", timeout=10)
            assert f"dynamo_component_requests_total{{{labels}}} 5.0" in text
            assert f"dynamo_component_inflight_requests{{{labels}}} 0.0" in text
            assert f'dynamo_component_errors_total{{{labels},error_type="Internal"}} 1.0' in text
            assert f"dynamo_component_request_duration_seconds_count{{{labels}}} 5.0" in text
            resp_bytes = [ln for ln in text.splitlines()
                          if ln.startswith(f"dynamo_component_response_bytes_total{{{labels}}}")]
            assert resp_bytes and float(resp_bytes[0].rsplit(" ", 1)[1]) > 0
            assert "dynamo_component_uptime_seconds " in text
            assert (await aget(port, "/nope"))[0] == 404
        finally:
            await rt.shutdown(grace_period=0)


def test_status_server_off_unless_port_set(monkeypatch):
    from dynamo.runtime.status_server import port_from_env

    monkeypatch.delenv("DYN_SYSTEM_PORT", raising=False)
    assert port_from_env() is None
    monkeypatch.setenv("DYN_SYSTEM_PORT", "-1")
    assert port_from_env() is None
    monkeypatch.setenv("DYN_SYSTEM_PORT", "9090")
    assert port_from_env() == 9090
    monkeypatch.setenv("DYN_SYSTEM_PORT", "http")
    with pytest.raises(errors.ConfigError, match="DYN_SYSTEM_PORT"):
        port_from_env()
    monkeypatch.setenv("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS", "generate")
    with pytest.raises(errors.ConfigError, match="JSON list"):
        from dynamo.runtime.health import _required_endpoints

        _required_endpoints()


@pytest.mark.parametrize("component", ["mocker", "echo"])
async def test_workers_serve_health_and_component_metrics(tmp_path, component):
    port = free_port()
    env = {"DYN_FILE_KV": str(tmp_path / "kv"), "DYN_SYSTEM_PORT": str(port), "DYN_SYSTEM_HOST": "127.0.0.1",
           "HF_HUB_OFFLINE": "1"}
    with processes(env) as procs:
        procs.spawn("-m", f"dynamo.{component}", "--model-path", str(QWEN_DIR))

        async def ready() -> bool:
            return (await aget(port, "/health"))[0] == 200

        await async_wait_for(ready, what=f"{component} ready", timeout=60)
        status, text = await aget(port, "/metrics")
        assert status == 200 and 'dynamo_component_inflight_requests{dynamo_component="backend"' in text


async def test_standalone_router_serves_health_and_router_metrics(tmp_path):
    port = free_port()
    env = {"DYN_FILE_KV": str(tmp_path / "kv"), "DYN_SYSTEM_PORT": str(port), "DYN_SYSTEM_HOST": "127.0.0.1"}
    with processes(env) as procs:
        procs.spawn("-m", "dynamo.router", "--endpoint", "dynamo.backend.generate")

        async def ready() -> bool:
            return (await aget(port, "/health"))[0] == 200

        await async_wait_for(ready, what="router ready", timeout=60)
        report = json.loads((await aget(port, "/health"))[1])
        assert report["endpoints"] == {"generate": "ready", "best_worker_id": "ready"}
        text = (await aget(port, "/metrics"))[1]
        assert "dynamo_component_router_requests" in text and 'dynamo_component="router"' in text
