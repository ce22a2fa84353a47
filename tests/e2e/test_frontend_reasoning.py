"""Reasoning split end to end: a mocker that thinks in Qwen3's think tokens, the frontend splitting
its output with the ``qwen3`` parser named on the worker card, the official ``openai`` client."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
THINK_END = 151668  # ``</think>`` in the Qwen3 tokenizer
# The first half of max_tokens is a think block: <think>, random tokens, </think>; then the answer.
REASONING = json.dumps({"start_thinking_token_id": 151667, "end_thinking_token_id": THINK_END,
                        "thinking_ratio": 0.5})
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def client():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100", "--reasoning", REASONING, "--dyn-reasoning-parser", "qwen3")
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0)
    finally:
        dep.close()


def _reasoning(obj) -> str | None:
    return (obj.model_extra or {}).get("reasoning_content")


def test_non_streaming_message_has_reasoning_and_content_apart(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    msg = resp.choices[0].message
    thought = _reasoning(msg)
    assert thought and msg.content
    for part in (thought, msg.content):
        assert "<think>" not in part and "</think>" not in part
    assert resp.usage.completion_tokens == 20


def test_streaming_deltas_carry_reasoning_then_content(client):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True)
    kinds: list[str] = []
    reasoning, content = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        if _reasoning(delta):
            kinds.append("reasoning")
            reasoning.append(_reasoning(delta))
        if delta.content:
            kinds.append("content")
            content.append(delta.content)
    assert reasoning and content
    # All reasoning first, then all content: the think block closes once.
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")
    assert "think>" not in "".join(reasoning) + "".join(content)


def test_enable_thinking_false_leaves_output_as_content(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20,
                                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    msg = resp.choices[0].message
    assert _reasoning(msg) is None
    # The mocker thinks regardless; with thinking switched off the frontend does not split it.
    assert "</think>" in msg.content


def test_think_block_cut_short_stays_reasoning(client):
    # Stopping on ``</think>`` (hidden) ends the output inside the think block, like max_tokens does.
    for stream in (False, True):
        resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=stream,
                                              extra_body={"stop_token_ids": [THINK_END]})
        if stream:
            chunks = list(resp)
            thought = "".join(_reasoning(c.choices[0].delta) or "" for c in chunks)
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            thought, content = _reasoning(resp.choices[0].message), resp.choices[0].message.content or ""
        assert thought and not content


def test_completions_are_not_split(client):
    resp = client.completions.create(model=MODEL, prompt="Why is the sky blue?", max_tokens=20)
    assert "<think>" in resp.choices[0].text and "</think>" in resp.choices[0].text
