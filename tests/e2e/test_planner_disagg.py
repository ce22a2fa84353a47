"""The planner in ``--mode disagg`` with the local connector over disaggregated mocker pools: a prefill pool
(``--disaggregation-mode prefill``) and a decode pool (``--disaggregation-mode decode``) behind a frontend
with the KV router and its prefill router.

Load-based scaling drives it. Mockers run in real time (speedup 1): a 3000-token prompt takes one prefill
pass of ~70 ms, and 16 clients sending such prompts back to back keep a queue of ~10 prompts on one
prefill engine, so its TTFT estimate (the queue pushed through in 8192-token chunks) is far over the
400 ms target; two clients keep it near 100 ms, under 80% of the target. Outputs are 4 tokens, so the
decode pool's ITL stays low and it holds at its one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import openai
import pytest

from dynamo.runtime import DistributedRuntime
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
ISL = 3000


class PrefillLoad:
    """``clients`` concurrent non-streaming completions of long prompts in a loop until stopped; records
    which prefill worker served each (``x-dynamo-routing``) and every failure."""

    def __init__(self, url: str, clients: int, seed: int) -> None:
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        self.clients, self.seed = clients, seed
        self.ok = 0
        self.failed: list[str] = []
        self.prefill_workers: dict[int, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _one(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            # A fresh prompt each time: a cached prefix would leave the prefill worker nothing to compute.
            prompt = [self.seed, i, n, *((7 * k + i * 131 + n * 17) % 40_000 + 100 for k in range(ISL - 3))]
            try:
                raw = await self.client.completions.with_raw_response.create(
                    model=MODEL, prompt=prompt, max_tokens=4)
                resp = raw.parse()
                prefill = json.loads(raw.headers["x-dynamo-routing"]).get("prefill") or {}
                if resp.choices[0].finish_reason != "length" or prefill.get("mode") != "remote":
                    self.failed.append(f"finish {resp.choices[0].finish_reason!r}, prefill {prefill}")
                    continue
                wid = int(prefill["worker_id"])
                self.prefill_workers[wid] = self.prefill_workers.get(wid, 0) + 1
                self.ok += 1
            except Exception as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")

    def start(self) -> PrefillLoad:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.clients)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()


async def test_planner_adds_a_prefill_worker_under_long_prompts_and_drains_it(monkeypatch):
    dep = new_deployment({"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30"})
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    mocker = f"python -m dynamo.mocker --model-path {QWEN} --block-size 16"
    rt = await DistributedRuntime.create("file")
    prefill = decode = None
    loads: list[PrefillLoad] = []
    try:
        dep.start_frontend("--router-mode", "kv")
        planner = dep.spawn(
            "planner", "-m", "dynamo.planner", "--environment", "local", "--backend", "mocker", "--mode", "disagg",
            "--local-prefill-worker-cmd",
            f"{mocker} --disaggregation-mode prefill --bootstrap-ports 0 --speedup-ratio 0.5",
            "--local-worker-cmd", f"{mocker} --disaggregation-mode decode --speedup-ratio 1",
            "--no-enable-throughput-scaling", "--enable-loadbased-scaling", "--loadbased-adjustment-interval", "1",
            "--ttft", "400", "--itl", "50", "--isl", str(ISL), "--max-gpu-budget", "3", "--min-endpoint", "1",
            "--load-predictor", "constant", "--no-correction", "-v")
        prefill = await rt.endpoint("dyn://dynamo.prefill.generate").client()
        decode = await rt.endpoint("dyn://dynamo.backend.generate").client()
        await prefill.wait_for_instances(60, count=1)
        await decode.wait_for_instances(60, count=1)
        await asyncio.to_thread(dep.wait_models, {MODEL}, 30)
        first = set(prefill.instance_ids())
        decoders = set(decode.instance_ids())

        heavy = PrefillLoad(dep.url, 16, seed=1).start()
        loads.append(heavy)
        await async_wait_for(lambda: len(prefill.instance_ids()) == 2, 60, 0.2,
                             what=f"a second prefill worker under load; logs:\n{dep.logs()[-4000:]}")
        [added] = set(prefill.instance_ids()) - first
        await async_wait_for(lambda: heavy.prefill_workers.get(added, 0) >= 4, 30, 0.2,
                             what=f"prefills on the new worker (served: {heavy.prefill_workers})")
        await heavy.stop()
        assert heavy.failed == [], heavy.failed
        assert set(decode.instance_ids()) == decoders  # long prompts, short outputs: the decode pool stays

        light = PrefillLoad(dep.url, 1, seed=2).start()
        loads.append(light)
        t0 = time.monotonic()
        await async_wait_for(lambda: len(prefill.instance_ids()) == 1, 60, 0.2,
                             what=f"the prefill pool back to one worker; logs:\n{dep.logs()[-4000:]}")
        served = light.ok
        # keep the light load going while the removed worker drains, then stop
        await async_wait_for(lambda: light.ok >= served + 4, 30, 0.2, what="requests after the scale-down")
        await light.stop()
        assert light.failed == [], light.failed
        assert time.monotonic() - t0 < 60
        assert set(decode.instance_ids()) == decoders
        log = (dep.logdir / "planner.log").read_text()
        assert "draining prefill worker" in log and "killing it" not in log
        assert "draining decode worker" not in log
        assert planner.poll() is None
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                await load.stop()
        for c in (prefill, decode):
            if c is not None:
                await c.close()
        await rt.shutdown(grace_period=0)
        dep.close()  # SIGTERM to the planner: it drains and stops its workers
