"""A frontend that cannot see the worker's model folder (as on another host) still serves the model."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import openai
import pytest

from dynamo.llm.model_registration import build_card
from dynamo.llm.preprocessor.request import OpenAIPreprocessor
from dynamo.llm.protocols.openai import ChatCompletionRequest
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_frontend_loads_model_files_from_the_store_when_the_worker_folder_is_gone(tmp_path):
    model = tmp_path / "worker-host" / "Qwen3-0.6B"
    shutil.copytree(QWEN, model)
    cache = tmp_path / "frontend-cache"
    dep = new_deployment({"DYN_MODEL_FILES_CACHE": str(cache)})
    kv = dep.env["DYN_FILE_KV"]
    try:
        dep.mocker("--speedup-ratio", "100", "--model-name", "qwen", model=model)
        mdc = quote("v1/mdc/", safe="")
        wait_for(lambda: any(p.name.startswith(mdc) for p in _files(kv)), 30, what="the worker's model card")
        # The worker has registered; its folder now exists only "on its host".
        shutil.rmtree(model)
        dep.start_frontend()
        dep.wait_models({"qwen"})

        expected = OpenAIPreprocessor.from_card(build_card(str(QWEN), "qwen")).preprocess_chat(
            ChatCompletionRequest.model_validate({"model": "qwen", "messages": MESSAGES})).prompt_tokens
        client = openai.OpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(model="qwen", messages=MESSAGES, max_tokens=7)
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (expected, 7)
        stream = client.chat.completions.create(model="qwen", messages=MESSAGES, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True})
        last = list(stream)[-1]
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (expected, 5)

        digest = build_card(str(QWEN)).files.digest
        assert (cache / digest / "tokenizer.json").read_bytes() == (QWEN / "tokenizer.json").read_bytes()
    finally:
        dep.close()


def _files(root: str) -> list[Path]:
    p = Path(root)
    return list(p.iterdir()) if p.is_dir() else []
