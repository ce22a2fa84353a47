"""A replay and a live deployment of the same tiny trace agree on every request's cached tokens.

The live side is a real frontend (KV router) and a mocker worker as subprocesses, driven by the
official ``openai`` client one request at a time; the replay runs the same trace closed-loop with one
request in flight (``replay_concurrency=1``), so both see the same sequence of cache states. The
mocker's cache is small (24 blocks), so evictions decide part of the answer.
"""

from __future__ import annotations

import openai
import pytest

from dynamo.mocker.args import MockEngineArgs
from dynamo.replay.simulation import ReplaySimulation
from dynamo.replay.workload import PromptBuilder, TraceRequest
from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
BS = 16
TRACE_BS = 32  # two engine blocks per hash id
BLOCKS = 24

TRACE = [
    TraceRequest(0, 96, 3, (1, 2, 3)),
    TraceRequest(0, 120, 4, (1, 2, 3, 4)),  # extends the first prompt
    TraceRequest(0, 160, 3, (5, 6, 7, 8, 9)),
    TraceRequest(0, 90, 2, (1, 2, 10)),  # shares two ids
    TraceRequest(0, 192, 5, (11, 12, 13, 14, 15, 16)),  # pushes older blocks out
    TraceRequest(0, 128, 3, (1, 2, 3, 4)),
    TraceRequest(0, 96, 2, (5, 6, 7)),
    TraceRequest(0, 64, 2, (1, 2)),  # a fully cached prompt recomputes its last block
    TraceRequest(0, 100, 3, (11, 12, 13, 17)),
]


def test_replay_and_live_agree_on_cached_tokens():
    builder = PromptBuilder(TRACE_BS, BS)
    prompts = [builder.token_ids(r) for r in TRACE]
    dep = new_deployment()
    try:
        dep.mocker("--block-size", str(BS), "--num-gpu-blocks-override", str(BLOCKS), "--speedup-ratio", "20")
        dep.start_frontend("--router-mode", "kv")
        dep.wait_models({MODEL})
        client = openai.OpenAI(base_url=dep.url + "/v1", api_key="none", max_retries=0)
        live = []
        for req, prompt in zip(TRACE, prompts, strict=True):
            out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=req.output_length)
            assert out.usage is not None and out.usage.prompt_tokens == req.input_length
            details = out.usage.prompt_tokens_details
            live.append(details.cached_tokens if details is not None else 0)
    finally:
        dep.close()
    args = MockEngineArgs(block_size=BS, num_gpu_blocks=BLOCKS)
    res = ReplaySimulation(TRACE, engine_args=args, num_workers=1, router_mode="kv_router",
                           trace_block_size=TRACE_BS, replay_concurrency=1).run()
    replayed = [r.reused_tokens for r in res.records]
    assert replayed == live
    assert any(0 < c for c in live) and any(c == 0 for c in live[1:])  # hits and evictions both happened
