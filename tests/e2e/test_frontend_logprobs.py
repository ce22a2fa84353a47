"""Logprobs end to end: the mocker's logprobs through the frontend to the official ``openai`` client,
chat and completions, streamed and not."""

from __future__ import annotations

import math

import openai
import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100")
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0)
    finally:
        dep.close()


def _check_chat_entries(entries, k: int) -> None:
    for e in entries:
        assert e.logprob <= 0.0
        assert bytes(e.bytes) == e.token.encode()
        assert len(e.top_logprobs) == k
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        if k:
            # the sampled token is the top candidate in the mocker's distribution
            assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)
            assert sum(math.exp(v) for v in tops) < 1.0


def test_chat_logprobs_cover_every_token(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, logprobs=True,
                                          top_logprobs=3)
    choice = resp.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == resp.usage.completion_tokens == 10
    _check_chat_entries(entries, 3)
    # each token's own text, concatenated, is the answer (no partial characters in the mocker's range)
    assert "".join(e.token for e in entries) == choice.message.content


def test_chat_logprobs_streamed_with_the_chunks_they_belong_to(client):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, logprobs=True,
                                            stream=True)
    entries, content = [], []
    for chunk in stream:
        ch = chunk.choices[0]
        if ch.delta.content:
            content.append(ch.delta.content)
            assert ch.logprobs is not None
            assert "".join(e.token for e in ch.logprobs.content) == ch.delta.content
        if ch.logprobs is not None:
            entries += ch.logprobs.content
    assert len(entries) == 10
    _check_chat_entries(entries, 0)
    assert "".join(e.token for e in entries) == "".join(content)


def test_chat_without_logprobs_has_none(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert resp.choices[0].logprobs is None


def test_completion_logprobs(client):
    resp = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == resp.choices[0].text
    for tok, value, top, offset in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset, strict=True):
        assert value <= 0.0 and top[tok] == value and len(top) == 2
        assert resp.choices[0].text[offset:].startswith(tok)


def test_completion_logprobs_streamed(client):
    tokens, offsets, text = [], [], []
    for chunk in client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, logprobs=0, stream=True):
        ch = chunk.choices[0]
        text.append(ch.text)
        if ch.logprobs is not None:
            tokens += ch.logprobs.tokens
            offsets += ch.logprobs.text_offset
    assert len(tokens) == 8 and "".join(tokens) == "".join(text)
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(8)]


@pytest.mark.parametrize("kwargs,param", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
])
def test_chat_logprobs_out_of_range_is_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, **kwargs)
    assert err.value.body["param"] == param


def test_completion_logprobs_out_of_range_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=4, logprobs=6)
    assert err.value.body["param"] == "logprobs"
