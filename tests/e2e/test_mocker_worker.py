"""The mocker as a worker process: streaming through the runtime, drain on SIGTERM, CLI errors."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest, StopConditions
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.engine import MockerEngine
from dynamo.runtime import DistributedRuntime, RequestContext
from tests.support.deploy import QWEN, new_deployment

pytestmark = pytest.mark.e2e


async def test_two_mocker_processes_stream_exact_token_counts_and_drain(monkeypatch):
    dep = new_deployment({"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "20"})
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    try:
        workers = [dep.mocker("--speedup-ratio", "200", name=f"m{i}") for i in range(2)]
        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://dynamo.backend.generate").client(LLMEngineOutput)
            ids = await client.wait_for_instances(30, count=2)

            async def one(i: int) -> tuple[int, str | None]:
                req = PreprocessedRequest(model="Qwen3-0.6B", token_ids=[(i * 7 + k) % 5000 for k in range(50)],
                                          stop_conditions=StopConditions(max_tokens=10 + i % 7))
                n, finish = 0, None
                async for out in await client.round_robin(req):
                    n += len(out.token_ids)
                    finish = out.finish_reason or finish
                    assert all(1000 <= t < 2000 for t in out.token_ids)
                return n, finish

            results = await asyncio.gather(*(one(i) for i in range(200)))
            assert [n for n, _ in results] == [10 + i % 7 for i in range(200)]
            assert {f for _, f in results} == {"length"}

            # SIGTERM mid-stream: the worker leaves discovery at once and finishes what it started.
            long_req = PreprocessedRequest(model="Qwen3-0.6B", token_ids=list(range(40)),
                                           stop_conditions=StopConditions(max_tokens=300))
            stream = await client.direct(long_req, ids[0])
            first = await anext(aiter(stream))
            target = _worker_for(dep, ids[0], workers)
            target.send_signal(signal.SIGTERM)
            rest = 0
            async for out in stream:
                rest += len(out.token_ids)
            assert len(first.token_ids) + rest == 300
            assert await asyncio.to_thread(target.wait, 30) == 0
            assert ids[0] not in client.instance_ids()
        finally:
            await rt.shutdown(grace_period=0)
    finally:
        dep.close()


def _worker_for(dep, instance_id: int, workers):
    for i, w in enumerate(workers):
        log = (dep.logdir / f"m{i}.log").read_text()
        if f"{instance_id:x}" in log:
            return w
    raise AssertionError("no worker log mentions the instance")


async def test_speedup_ratio_scales_wall_time():
    async def wall(speedup: float) -> float:
        engine = MockerEngine(MockEngineArgs.from_dict({"speedup_ratio": speedup, "block_size": 16}), 1)
        engine.start()
        try:
            req = PreprocessedRequest(model="m", token_ids=list(range(2048)),
                                      stop_conditions=StopConditions(max_tokens=20))
            t0 = time.perf_counter()
            async for _ in engine.generate(req, RequestContext()):
                pass
            return time.perf_counter() - t0
        finally:
            await engine.stop()

    slow, fast = await wall(1.0), await wall(10.0)
    assert 6.0 < slow / fast < 14.0, (slow, fast)


async def test_cancellation_frees_blocks_at_once():
    engine = MockerEngine(MockEngineArgs.from_dict({"speedup_ratio": 10.0, "block_size": 16}), 1)
    engine.start()
    try:
        ctx = RequestContext()
        req = PreprocessedRequest(model="m", token_ids=list(range(256)), stop_conditions=StopConditions(max_tokens=500))
        gen = engine.generate(req, ctx)
        await anext(gen)
        sched = engine.ranks[0].scheduler
        assert sched.kv.num_active_blocks > 0
        await gen.aclose()
        assert sched.kv.num_active_blocks == 0 and sched.is_idle
    finally:
        await engine.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "dynamo.mocker", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.parametrize(("args", "message"), [
    ((), "--model-path is required"),
    (("--model-path", "no-such-org/no-such-model"), "pass --model-path with a local directory"),
    (("--model-path", str(QWEN), "--is-prefill-worker", "--is-decode-worker"), "mutually exclusive"),
    (("--model-path", str(QWEN), "--disaggregation-mode", "decode", "--is-prefill-worker"), "contradicts"),
    (("--model-path", str(QWEN), "--bootstrap-ports", "7000"), "only for prefill workers"),
    (("--model-path", str(QWEN), "--disaggregation-mode", "prefill", "--bootstrap-ports", "1,2"),
     "give one per worker"),
    (("--model-path", str(QWEN), "--disaggregation-mode", "prefill", "--bootstrap-ports", "x"), "comma-separated"),
    (("--model-path", str(QWEN), "--speedup-ratio", "-1"), "speedup_ratio"),
    (("--model-path", str(QWEN), "--extra-engine-args", "/nonexistent.json"), "--extra-engine-args"),
])
def test_cli_errors_are_one_clear_line(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_extra_engine_args_override_flags(tmp_path):
    extra = tmp_path / "engine.json"
    extra.write_text(json.dumps({"block_size": 32, "num_gpu_blocks": 128, "bogus": 1}))
    proc = run_cli("--model-path", str(QWEN), "--extra-engine-args", str(extra))
    assert proc.returncode == 2 and "unknown mocker engine args ['bogus']" in proc.stderr
    args = MockEngineArgs.from_json(_write(tmp_path, {"block_size": 32}), base=MockEngineArgs(block_size=64))
    assert args.block_size == 32


def _write(tmp_path, obj) -> str:
    p = tmp_path / "e.json"
    p.write_text(json.dumps(obj))
    return str(p)


async def test_mocker_publishes_kv_events_load_and_forward_pass_metrics(monkeypatch):
    from dynamo.kv_router.protocols import ActiveLoad, RouterEvent

    dep = new_deployment()
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    try:
        dep.mocker("--speedup-ratio", "20", "--block-size", "16")
        rt = await DistributedRuntime.create("file")
        try:
            comp = rt.namespace("dynamo").component("backend")
            kv = await comp.subscribe("kv-events")
            fpm = await comp.subscribe("forward-pass-metrics")
            load = await rt.namespace("dynamo").subscribe("kv_metrics")
            client = await comp.endpoint("generate").client(LLMEngineOutput)
            await client.wait_for_instances(30)
            await kv.wait_for_publishers(1, 10)
            await fpm.wait_for_publishers(1, 10)
            await load.wait_for_publishers(1, 10)
            req = PreprocessedRequest(model="m", token_ids=list(range(64)), stop_conditions=StopConditions(max_tokens=40))
            async for _ in await client.round_robin(req):
                pass
            async with asyncio.timeout(10):
                event = RouterEvent.from_wire((await anext(aiter(kv))).decode())
                report = (await anext(aiter(fpm))).decode()
                used = (await anext(aiter(load))).decode(ActiveLoad)
            # ZMQ may drop what a subscriber misses while joining; the gap detector reports that.
            assert event.worker_id == client.instance_ids()[0] and event.event.event_id >= 0
            assert report["passes"] >= 1 and report["worker_id"] == event.worker_id
            assert used.worker_id == event.worker_id and used.kv_used_blocks is not None
        finally:
            await rt.shutdown(grace_period=0)
    finally:
        dep.close()
