"""The planner in ``--mode disagg`` with the local connector over disaggregated mocker pools: a prefill pool
(``--disaggregation-mode prefill``) and a decode pool (``--disaggregation-mode decode``) behind a frontend
with the KV router and its prefill router.

Load-based scaling drives it (seconds, not the throughput planner's minutes).

* Prefill pool: prefill mockers at half speed (a 3000-token prompt is one ~130 ms pass, a full
  8192-token chunk ~340 ms). 16 clients sending such prompts back to back queue enough on one prefill
  engine that its TTFT estimate (the queue and the new prompt pushed through in 8192-token chunks)
  passes the 400 ms target; one client keeps it near 130 ms, under 80% of the target. Outputs are 4
  tokens, so the decode pool's ITL stays low and it holds at its one worker.
* Decode pool: a small KV cache (1024 blocks) and 32 streams of 120 tokens push the decode engine's
  estimated ITL (pass time at its KV load) over a 15 ms target; two streams keep it near 7 ms. Prompts
  are short, so the prefill pool holds at its one worker.
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
        assert set(prefill.instance_ids()) == first  # the newest worker is the one drained
        assert set(decode.instance_ids()) == decoders
        log = (dep.logdir / "planner.log").read_text()
        assert "draining prefill worker" in log and "killing it" not in log
        assert "draining decode worker" not in log
        # --max-gpu-budget 3 covers both pools: one decode engine leaves room for two prefill engines
        assert log.count("started prefill worker") == 2 and log.count("started decode worker") == 1
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


class DecodeLoad:
    """``streams`` concurrent streaming completions of short prompts in a loop until stopped."""

    def __init__(self, url: str, streams: int, max_tokens: int = 120) -> None:
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        self.streams, self.max_tokens = streams, max_tokens
        self.decode_workers: dict[int, int] = {}  # streams each decode worker was chosen for
        self.ok = 0
        self.failed: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _one(self, i: int) -> None:
        while not self._stop.is_set():
            try:
                raw = await self.client.completions.with_raw_response.create(
                    model=MODEL, prompt=[i, *((7 * k) % 5000 + 100 for k in range(200))], max_tokens=self.max_tokens,
                    stream=True)
                wid = int(json.loads(raw.headers["x-dynamo-routing"])["worker_id"])
                self.decode_workers[wid] = self.decode_workers.get(wid, 0) + 1
                stream = raw.parse()
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

    def start(self) -> DecodeLoad:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.streams)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()


async def test_planner_adds_a_decode_worker_under_long_outputs_and_drains_it(monkeypatch):
    dep = new_deployment({"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30"})
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    mocker = f"python -m dynamo.mocker --model-path {QWEN} --block-size 16 --speedup-ratio 1"
    rt = await DistributedRuntime.create("file")
    prefill = decode = None
    loads: list[DecodeLoad] = []
    try:
        dep.start_frontend("--router-mode", "kv")
        planner = dep.spawn(
            "planner", "-m", "dynamo.planner", "--environment", "local", "--backend", "mocker", "--mode", "disagg",
            "--local-prefill-worker-cmd", f"{mocker} --disaggregation-mode prefill --bootstrap-ports 0",
            "--local-worker-cmd", f"{mocker} --disaggregation-mode decode --num-gpu-blocks-override 1024",
            "--no-enable-throughput-scaling", "--enable-loadbased-scaling", "--loadbased-adjustment-interval", "1",
            "--ttft", "3000", "--itl", "15", "--isl", "200", "--max-gpu-budget", "3", "--min-endpoint", "1",
            "--load-predictor", "constant", "--no-correction", "-v")
        prefill = await rt.endpoint("dyn://dynamo.prefill.generate").client()
        decode = await rt.endpoint("dyn://dynamo.backend.generate").client()
        await prefill.wait_for_instances(60, count=1)
        await decode.wait_for_instances(60, count=1)
        await asyncio.to_thread(dep.wait_models, {MODEL}, 30)
        first = set(decode.instance_ids())
        prefillers = set(prefill.instance_ids())

        heavy = DecodeLoad(dep.url, 32).start()
        loads.append(heavy)
        await async_wait_for(lambda: len(decode.instance_ids()) == 2, 60, 0.2,
                             what=f"a second decode worker under load; logs:\n{dep.logs()[-4000:]}")
        [added] = set(decode.instance_ids()) - first
        await async_wait_for(lambda: heavy.decode_workers.get(added, 0) >= 4, 30, 0.2,
                             what=f"streams on the new decoder (chosen: {heavy.decode_workers})")
        await heavy.stop()
        assert heavy.failed == [], heavy.failed
        assert set(prefill.instance_ids()) == prefillers  # short prompts: the prefill pool stays

        light = DecodeLoad(dep.url, 2).start()
        loads.append(light)
        await async_wait_for(lambda: len(decode.instance_ids()) == 1, 60, 0.2,
                             what=f"the decode pool back to one worker; logs:\n{dep.logs()[-4000:]}")
        served = light.ok
        # streams the removed decoder held finish while it drains; new ones go to the one left
        await async_wait_for(lambda: light.ok >= served + 4, 30, 0.2, what="requests after the scale-down")
        await light.stop()
        assert light.failed == [], light.failed
        assert set(decode.instance_ids()) == first  # the newest worker is the one drained
        log = (dep.logdir / "planner.log").read_text()
        assert "draining decode worker" in log and "killing it" not in log
        assert "draining prefill worker" not in log
        assert planner.poll() is None
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                await load.stop()
        for c in (prefill, decode):
            if c is not None:
                await c.close()
        await rt.shutdown(grace_period=0)
        dep.close()
