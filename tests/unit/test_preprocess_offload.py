"""Big chat requests are templated and tokenized off the event loop, on a pool (frontend/pipeline.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.pipeline import OFFLOAD_CHARS, PREPROCESS_THREADS, ModelEngine, PipelineOptions
from dynamo.llm.model_manager import WorkerSet
from dynamo.llm.preprocessor.request import OpenAIPreprocessor, PreprocessResult
from dynamo.llm.preprocessor.tokenizer import LONG_TEXT_CHARS
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.openai import ChatCompletionRequest
from tests.support.procs import SHARED_DATA

pytestmark = pytest.mark.unit

QWEN = SHARED_DATA / "models" / "Qwen3-0.6B"


class RecordingPreprocessor(OpenAIPreprocessor):
    """Records the thread each chat request was preprocessed on (the test hook)."""

    __slots__ = ("threads",)

    def preprocess_chat(self, req: ChatCompletionRequest, request_id: str | None = None) -> PreprocessResult:
        self.threads.append(threading.current_thread().name)  # type: ignore[attr-defined]
        return super().preprocess_chat(req, request_id)


@pytest.fixture(scope="module")
def engine() -> ModelEngine:
    card = ModelDeploymentCard(name="qwen", model_path=str(QWEN), context_length=40960)
    base = OpenAIPreprocessor.from_card(card)
    pre = RecordingPreprocessor(model_name="qwen", tokenizer=base.tokenizer, chat_template=base.chat_template,
                                context_length=card.context_length)
    pre.threads = []  # type: ignore[attr-defined]
    ws = WorkerSet("ns", "qwen", False, card, card.checksum(), ("ns", "backend", "generate"))
    return ModelEngine(ws, pre, None, FrontendMetrics(), PipelineOptions())


def _offloaded(engine: ModelEngine) -> float:
    return engine.metrics.preprocess_offloaded.labels("qwen")._value.get()


def _chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "qwen", "max_tokens": 4, **kw})


async def _run(engine: ModelEngine, req: ChatCompletionRequest) -> str:
    threads = engine.preprocessor.threads  # type: ignore[attr-defined]
    before = len(threads)
    await engine.preprocess_chat(req, "r")
    assert len(threads) == before + 1
    return threads[-1]


async def test_small_request_stays_on_the_loop(engine: ModelEngine) -> None:
    before = _offloaded(engine)
    name = await _run(engine, _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]))
    assert name == threading.current_thread().name and _offloaded(engine) == before


async def test_large_list_of_parts_content_is_offloaded(engine: ModelEngine) -> None:
    parts = [{"type": "text", "text": "lorem ipsum " * 200} for _ in range(OFFLOAD_CHARS // 2000)]
    before = _offloaded(engine)
    name = await _run(engine, _chat(messages=[{"role": "user", "content": parts}]))
    assert name.startswith("dynamo-preprocess") and _offloaded(engine) == before + 1


async def test_large_tools_are_offloaded(engine: ModelEngine) -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "d" * 400,
                                                "parameters": {"type": "object", "properties": {}}}}
             for i in range(OFFLOAD_CHARS // 400)]
    before = _offloaded(engine)
    name = await _run(engine, _chat(messages=[{"role": "user", "content": "hi"}], tools=tools))
    assert name.startswith("dynamo-preprocess") and _offloaded(engine) == before + 1


async def test_long_prompts_do_not_share_one_thread(engine: ModelEngine) -> None:
    assert PREPROCESS_THREADS >= 2
    parts = [{"type": "text", "text": "lorem ipsum " * 2000}]
    reqs = [_chat(messages=[{"role": "user", "content": parts}]) for _ in range(8)]
    threads = engine.preprocessor.threads  # type: ignore[attr-defined]
    before = len(threads)
    await asyncio.gather(*(engine.preprocess_chat(r, f"r{i}") for i, r in enumerate(reqs)))
    used = set(threads[before:])
    assert all(n.startswith("dynamo-preprocess") for n in used)
    # Submitted together, eight long prompts are spread over several threads (the pool only reuses
    # an idle thread), where one helper thread used to take them one after another.
    assert len(used) >= 2


async def test_prompt_on_the_tokenizers_gil_free_path_is_offloaded(engine: ModelEngine) -> None:
    # ~2000 tokens (12k chars): long enough for the tokenizer to release the GIL, so a pool thread
    # tokenizes it on another core; kept on the loop, such prompts capped the frontend at one core.
    text = "lorem ipsum " * 1000
    assert LONG_TEXT_CHARS < len(text) and OFFLOAD_CHARS <= LONG_TEXT_CHARS
    before = _offloaded(engine)
    name = await _run(engine, _chat(messages=[{"role": "user", "content": text}]))
    assert name.startswith("dynamo-preprocess") and _offloaded(engine) == before + 1
