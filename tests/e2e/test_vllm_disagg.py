"""Disaggregated prefill/decode with real vLLM engines on the CPU: a prefill worker and a decode worker
moving KV through vLLM's shared-storage example connector, behind the frontend's prefill router.

The decode worker proves it used the prefill worker's KV: the prompt is fresh (never served before),
yet its engine reports the prompt's full blocks as cached — loaded through the connector, not computed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.deploy import Deployment, new_deployment
from tests.support.procs import wait_for
from tests.support.vllm import BLOCK, require_vllm, vllm_worker, write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL = "tiny-qwen3"
WORDS = "harbour lantern granite meadow copper violet orchard thunder saffron glacier pepper willow".split()


def connector(role: str, store: Path) -> str:
    return json.dumps({"kv_connector": "ExampleConnector", "kv_role": role,
                       "kv_connector_extra_config": {"shared_storage_path": str(store)}})


def components(dep: Deployment) -> list[str]:
    try:
        return [i["component"] for i in httpx.get(dep.url + "/health", timeout=5).json()["instances"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def disagg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    require_vllm()
    model = write_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3")
    store = tmp_path_factory.mktemp("kv-store")
    dep = new_deployment()
    procs = [vllm_worker(dep, "prefill", model, "--is-prefill-worker", "--kv-transfer-config",
                         connector("kv_producer", store), core=0),
             vllm_worker(dep, "decode", model, "--is-decode-worker", "--kv-transfer-config",
                         connector("kv_consumer", store), core=1)]
    dep.start_frontend("--router-mode", "kv")
    try:
        def ready() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a vLLM worker exited with {p.returncode}:\n{dep.logs()}")
            return sorted(components(dep)) == ["backend", "prefill"]

        wait_for(ready, timeout=600, interval=0.5, what="a vLLM prefill and a decode worker")
        yield dep, store
    finally:
        dep.close()


def test_prefill_on_one_engine_decode_on_the_other(disagg: tuple[Deployment, Path]) -> None:
    dep, store = disagg
    client = openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    seed = uuid.uuid4().int
    prompt = " ".join(WORDS[(seed >> i) % len(WORDS)] for i in range(120))
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                                      extra_body={"ignore_eos": True})
    resp = raw.parse()
    decision = json.loads(raw.headers["x-dynamo-routing"])
    assert decision["prefill"]["mode"] == "remote" and decision["prefill"]["path"] == "synchronous"
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"
    n = resp.usage.prompt_tokens
    # All full blocks but the last token's came from the prefill worker through the connector.
    loaded = resp.usage.prompt_tokens_details.cached_tokens
    assert loaded >= (n - 1) // BLOCK * BLOCK > 0, (n, loaded)
    assert any(store.rglob("*.safetensors")), "the prefill worker wrote no KV to the shared store"
    # Streaming through the same path gives the same greedy text.
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in stream if c.choices) == resp.choices[0].text
    client.close()


def test_worker_flags_need_a_kv_connector() -> None:
    require_vllm()
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dynamo.vllm", "--model", "/nonexistent", "--is-decode-worker"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--kv-transfer-config" in proc.stderr and "Traceback" not in proc.stderr
