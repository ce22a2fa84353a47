"""``python -m dynamo.router`` in front of mocker workers, driven through the runtime client."""

from __future__ import annotations

import pytest

from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest, StopConditions
from dynamo.runtime import DistributedRuntime
from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e


async def test_standalone_router_generate_and_best_worker_id(monkeypatch):
    dep = new_deployment()
    monkeypatch.setenv("DYN_FILE_KV", dep.env["DYN_FILE_KV"])
    try:
        dep.mocker("--num-workers", "2", "--block-size", "16", "--speedup-ratio", "100")
        dep.spawn("router", "-m", "dynamo.router", "--endpoint", "dynamo.backend.generate", "--block-size", "16")
        rt = await DistributedRuntime.create("file")
        try:
            router = await rt.endpoint("dyn://dynamo.router.generate").client(LLMEngineOutput)
            best = await rt.endpoint("dyn://dynamo.router.best_worker_id").client()
            await router.wait_for_instances(30)
            await best.wait_for_instances(30)
            workers = await rt.endpoint("dyn://dynamo.backend.generate").client()
            await workers.wait_for_instances(30, count=2)

            prompt = list(range(1000, 1064))
            req = PreprocessedRequest(model="Qwen3-0.6B", token_ids=prompt,
                                      stop_conditions=StopConditions(max_tokens=5))
            tokens = []
            async for out in await router.round_robin(req):
                tokens += out.token_ids
            assert len(tokens) == 5

            # The worker that served the prompt now holds its 4 blocks; best_worker_id says so.
            async def ask() -> dict:
                return await anext(aiter(await best.round_robin({"token_ids": prompt})))

            answer = await ask()
            for _ in range(100):
                if answer["overlap_blocks"] == 4:
                    break
                answer = await ask()
            assert answer["overlap_blocks"] == 4
            assert answer["worker_id"] in workers.instance_ids()
            # Asking changes nothing: the same answer again.
            assert await ask() == answer
        finally:
            await rt.shutdown(grace_period=0)
    finally:
        dep.close()
