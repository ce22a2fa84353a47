"""Logprobs: the mocker's made-up distribution, slicing to the accepted tokens, OpenAI's two shapes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamo.frontend.logprobs_output import MIN_LOGPROB, CompletionLogprobs, TokenTexts, chat_entries
from dynamo.llm.postprocessor.logprobs import TokenLogprobs
from dynamo.llm.postprocessor.stop import StopChecker
from dynamo.llm.preprocessor.tokenizer import Tokenizer
from dynamo.llm.protocols.engine import LLMEngineOutput
from dynamo.mocker.logprobs import token_logprobs
from tests.support.deploy import QWEN

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    return Tokenizer.from_dir(QWEN)


@given(st.lists(st.integers(0, 160_000), min_size=1, max_size=8), st.integers(0, 10_000), st.integers(0, 20))
def test_mocker_logprobs_are_a_plausible_distribution(tokens: list[int], start: int, k: int) -> None:
    chosen, top = token_logprobs(tokens, start, k)
    assert len(chosen) == len(top) == len(tokens)
    for tid, lp, cands in zip(tokens, chosen, top, strict=True):
        assert lp <= 0.0
        assert len(cands) == k
        if not k:
            continue
        # the sampled token ranks first, with its own logprob; then strictly decreasing, distinct ids
        assert cands[0] == (tid, lp)
        values = [v for _, v in cands]
        assert values == sorted(values, reverse=True) and len(set(values)) == k
        assert len({t for t, _ in cands}) == k
        assert sum(math.exp(v) for v in values) < 1.0


def test_mocker_logprobs_depend_on_position_not_call() -> None:
    assert token_logprobs([1500, 1501], 3, 2) == token_logprobs([1500, 1501], 3, 2)
    assert token_logprobs([1500], 3, 0)[0] != token_logprobs([1500], 4, 0)[0]


def test_only_the_accepted_tokens_logprobs_reach_the_client() -> None:
    out = LLMEngineOutput(token_ids=[5, 6, 2], log_probs=[-0.1, -0.2, -0.3],
                          top_logprobs=[[(5, -0.1)], [(6, -0.2)], [(2, -0.3)]])
    # token 2 is the hidden EOS: text and logprobs both stop before it
    res = StopChecker(None, hidden_stop_ids=[2]).process_output(out)
    lp = TokenLogprobs.accepted(out, res.num_tokens)
    assert lp is not None and (lp.token_ids, lp.logprobs, lp.top) == ([5, 6], [-0.1, -0.2], [[(5, -0.1)], [(6, -0.2)]])
    assert TokenLogprobs.accepted(LLMEngineOutput(token_ids=[5]), 1) is None


def test_chat_entries_in_openai_shape(qwen: Tokenizer) -> None:
    ids = qwen.encode(" Paris")
    (tid,) = ids
    lp = TokenLogprobs([tid], [float("-inf")], [[(tid, -0.5), (tid + 1, -1.5)]])
    (entry,) = chat_entries(TokenTexts(qwen), lp)
    assert entry["token"] == " Paris" and entry["bytes"] == list(b" Paris")
    assert entry["logprob"] == MIN_LOGPROB  # JSON has no -inf
    assert [c["logprob"] for c in entry["top_logprobs"]] == [-0.5, -1.5]
    assert entry["top_logprobs"][0] == {"token": " Paris", "logprob": -0.5, "bytes": list(b" Paris")}


def test_completion_logprobs_offsets_run_across_chunks(qwen: Tokenizer) -> None:
    ids = qwen.encode("The capital is Paris")
    acc = CompletionLogprobs(TokenTexts(qwen))
    first = acc.add(TokenLogprobs(ids[:2], [-0.1, -0.2], [[(ids[0], -0.1)], [(ids[1], -0.2)]]))
    second = acc.add(TokenLogprobs(ids[2:], [-0.3] * (len(ids) - 2), None))
    text = "".join(acc.tokens)
    assert text == "The capital is Paris"
    assert first["text_offset"] == [0, len(acc.tokens[0])]
    assert [text[o:].startswith(t) for o, t in zip(acc.text_offset, acc.tokens, strict=True)] == [True] * len(ids)
    # the sampled token is always among the top_logprobs keys
    assert all(t in top for t, top in zip(acc.tokens, acc.top_logprobs, strict=True))
    assert acc.whole()["tokens"] == first["tokens"] + second["tokens"]
