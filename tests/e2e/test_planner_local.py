"""The planner as a process with the local connector over mocker workers and a frontend: rising load adds
a worker that registers and takes traffic; falling load removes one, drained, with zero failed requests.

Load-based scaling drives it (seconds, not the throughput planner's minutes): mockers run in real time
(speedup 1) with a small KV cache, so 32 concurrent streams push every engine's estimated ITL over the
15 ms target (decode steps ~25 ms) while 2 streams keep it near 7 ms, under 80% of the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import openai
import pytest

from dynamo.runtime import DistributedRuntime
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.e2e

PROMPT = [(7 * i) % 5000 + 100 for i in range(200)]


class Load:
    """``streams`` concurrent streaming completions in a loop until stopped; counts outcomes."""

    def __init__(self, url: str, streams: int, max_tokens: int = 120) -> None:
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        self.streams, self.max_tokens = streams, max_tokens
        self.ok = 0
        self.failed: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _one(self, i: int) -> None:
        while not self._stop.is_set():
            try:
                stream = await self.client.completions.create(
                    model="Qwen3-0.6B", prompt=[i, *PROMPT], max_tokens=self.max_tokens, stream=True)
                n, finish = 0, None
                async for chunk in stream:
                    n += 1
                    finish = chunk.choices[0].finish_reason or finish if chunk.choices else finish
                if finish != "length":
                    self.failed.append(f"finish {finish!r} after {n} chunks")
                else:
                    self.ok += 1
            except Exception as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.streams)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()


async def test_planner_scales_mockers_up_and_drains_one_down(monkeypatch):
    dep = new_deployment({"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30"})
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    worker = (f"python -m dynamo.mocker --model-path {QWEN} --speedup-ratio 1 --block-size 16 "
              "--num-gpu-blocks-override 1024")
    rt = await DistributedRuntime.create("file")
    client = None
    loads: list[Load] = []
    try:
        dep.start_frontend()
        planner = dep.spawn(
            "planner", "-m", "dynamo.planner", "--environment", "local", "--backend", "mocker", "--mode", "agg",
            "--local-worker-cmd", worker, "--no-enable-throughput-scaling", "--enable-loadbased-scaling",
            "--loadbased-adjustment-interval", "1", "--itl", "15", "--ttft", "3000", "--isl", "200",
            "--max-gpu-budget", "2", "--min-endpoint", "1", "--load-predictor", "constant", "--no-correction", "-v")
        client = await rt.endpoint("dyn://dynamo.backend.generate").client()
        await client.wait_for_instances(60, count=1)
        await asyncio.to_thread(dep.wait_models, {"Qwen3-0.6B"}, 30)
        first = set(client.instance_ids())

        heavy = Load(dep.url, 32).start()
        loads.append(heavy)
        await async_wait_for(lambda: len(client.instance_ids()) == 2, 90, 0.2,
                             what=f"a second worker under load; planner log:\n{dep.logs()[-4000:]}")
        added = set(client.instance_ids()) - first
        assert len(added) == 1
        served_before = heavy.ok
        await async_wait_for(lambda: heavy.ok >= served_before + 32, 60, 0.2, what="traffic over both workers")
        await heavy.stop()
        assert heavy.failed == []

        light = Load(dep.url, 2).start()
        loads.append(light)
        t0 = time.monotonic()
        await async_wait_for(lambda: len(client.instance_ids()) == 1, 90, 0.2,
                             what=f"scale-down to one worker; logs:\n{dep.logs()[-4000:]}")
        # keep the light load going while the removed worker drains, then stop
        await async_wait_for(lambda: light.ok >= 4, 60, 0.2, what="requests after the scale-down")
        await light.stop()
        assert light.failed == [], light.failed
        assert light.ok > 0
        assert time.monotonic() - t0 < 90
        log = (dep.logdir / "planner.log").read_text()
        assert "draining" in log and "killing it" not in log
        assert planner.poll() is None
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                await load.stop()
        if client is not None:
            await client.close()
        await rt.shutdown(grace_period=0)
        dep.close()  # SIGTERM to the planner: it drains and stops its workers



@pytest.mark.parametrize(("argv", "last_line"), [
    (["--environment", "local", "--mode", "agg", "--no-enable-throughput-scaling", "--enable-loadbased-scaling"],
     "python -m dynamo.planner: error: --environment local needs --local-worker-cmd (the worker command line)"),
    (["--environment", "virtual", "--profile-results-dir", "/nonexistent"],
     "python -m dynamo.planner: error: --profile-results-dir /nonexistent: expected "
     "selected_prefill_interpolation/raw_data.npz and selected_decode_interpolation/raw_data.npz, or "
     "prefill.npz and decode.npz"),
    (["--load-predictor", "oracle"], "python -m dynamo.planner: error: argument --load-predictor: invalid choice: "
     "'oracle' (choose from 'constant', 'arima', 'kalman', 'prophet')"),
])
def test_bad_flags_exit_2_with_one_error_line(argv, last_line):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dynamo.planner", *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == last_line
