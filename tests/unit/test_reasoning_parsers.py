"""Reasoning parsers on recorded model outputs, whole and in random chunkings."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.llm.postprocessor.parsers.reasoning import (
    REASONING_PARSERS,
    check_reasoning_parser,
    reasoning_parser_for,
    split_all,
)
from dynamo.runtime.errors import ConfigError
from tests.support.procs import SHARED_DATA

STREAMS = SHARED_DATA / "dynamo" / "engine_streams"


def _recorded(rel: str) -> tuple[list[str], dict]:
    """The engine's text deltas of a recorded stream and the split the recording expects."""
    data = json.loads((STREAMS / rel).read_text())
    deltas = [c["data"]["choices"][0]["delta"].get("content") or "" for c in data["input_stream"]
              if c["data"].get("choices")]
    return deltas, data["expected_output"]


def _stream(name: str, deltas: list[str]) -> tuple[str, str]:
    parser = REASONING_PARSERS[name]()
    reasoning, content = [], []
    for d in deltas:
        r, c = parser.feed(d)
        reasoning.append(r)
        content.append(c)
    r, c = parser.finish()
    return "".join(reasoning) + r, "".join(content) + c


RECORDED = [
    ("qwen3", "vllm/qwen3-0.6B/chat_completion_stream_5627a4c6-no-tool.json"),
    ("qwen3", "sglang/qwen3-0.6B/chat_completion_stream_f121d1ca-no-tool.json"),
    ("deepseek_r1", "vllm/deepseek-v3/chat_completion_stream_no_tool.json"),
    ("deepseek_r1", "vllm/deepseek-v3.1/chat_completion_stream_no_tool.json"),
    ("gpt_oss", "vllm/gpt-oss-20b/chat_completion_stream_49f581c1-no-tool.json"),
    ("gpt_oss", "sglang/gpt-oss-20b/chat_completion_stream_675195a8-no-tool.json"),
]


@pytest.mark.parametrize(("name", "rel"), RECORDED, ids=[r for _, r in RECORDED])
def test_recorded_stream_splits_as_recorded(name, rel):
    deltas, expected = _recorded(rel)
    reasoning, content = _stream(name, deltas)
    assert reasoning == expected["reasoning_content"]
    assert content == expected["normal_content"]
    # Non-streaming: the whole text at once gives the same split.
    assert split_all(REASONING_PARSERS[name](), "".join(deltas)) == (reasoning, content)


@pytest.mark.parametrize("rel", ["vllm/qwen3-0.6B/chat_completion_stream_8f33c28b-tool.json",
                                 "sglang/qwen3-0.6B/chat_completion_stream_c42ba578-tool.json"])
def test_qwen3_tool_call_after_reasoning_stays_content(rel):
    deltas, expected = _recorded(rel)
    reasoning, content = _stream("qwen3", deltas)
    assert reasoning == expected["reasoning_content"]
    # The call markup is the tool-call parser's to read: it must reach it untouched.
    assert content.startswith("\n\n<tool_call>\n{") and content.endswith("</tool_call>")


@pytest.mark.parametrize("rel", ["vllm/gpt-oss-20b/chat_completion_stream_f0c86d72-tool.json",
                                 "sglang/gpt-oss-20b/chat_completion_stream_19c97899-tool.json"])
def test_gpt_oss_tool_message_passes_through_verbatim(rel):
    deltas, expected = _recorded(rel)
    reasoning, content = _stream("gpt_oss", deltas)
    assert reasoning == expected["reasoning_content"]
    call = expected["tool_calls"][0]["function"]
    assert content == (f"<|start|>assistant<|channel|>commentary to=functions.{call['name']} "
                       f"<|constrain|>json<|message|>{call['arguments']}<|call|>")


TABLE = [
    # (parser, output, reasoning, content)
    ("deepseek_r1", "Okay, so 2+2.\n</think>\n\nIt is 4.", "Okay, so 2+2.\n", "\n\nIt is 4."),
    ("deepseek_r1", "<think>\nhmm</think>done", "\nhmm", "done"),
    ("deepseek_r1", "</think>answer", "", "answer"),
    ("deepseek_r1", "no end tag at all", "no end tag at all", ""),
    ("qwen3", "<think>\nplan\n</think>\n\nanswer", "\nplan\n", "\n\nanswer"),
    ("qwen3", "<think>\n\n</think>\n\nanswer", "\n\n", "\n\nanswer"),
    ("qwen3", "plain answer, no think block", "", "plain answer, no think block"),
    ("qwen3", "\n<think>x</think>y", "x", "y"),
    ("qwen3", "a <think>later</think> tag is content", "", "a <think>later</think> tag is content"),
    ("qwen3", "<thin", "", "<thin"),
    ("qwen3", "", "", ""),
    ("gpt_oss", "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>hi<|return|>",
     "think", "hi"),
    ("gpt_oss", "<|channel|>final<|message|>only final", "", "only final"),
    ("gpt_oss", "no channels at all", "", "no channels at all"),
    ("gpt_oss", "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary<|message|>note<|end|>"
     "<|start|>assistant<|channel|>final<|message|>b", "a", "noteb"),
    ("gpt_oss", "<|channel|>analysis<|message|>a <|en", "a <|en", ""),
    ("gpt_oss", "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|chan", "a", ""),
]


@pytest.mark.parametrize(("name", "text", "reasoning", "content"), TABLE)
def test_table(name, text, reasoning, content):
    assert split_all(REASONING_PARSERS[name](), text) == (reasoning, content)


def _chunk(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


CASES = [(name, text) for name, text, _, _ in TABLE] + [
    (name, "".join(_recorded(rel)[0])) for name, rel in RECORDED]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_splits_the_same(case, cuts):
    name, text = case
    whole = split_all(REASONING_PARSERS[name](), text)
    assert _stream(name, _chunk(text, cuts)) == whole


@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
@settings(max_examples=40, deadline=None)
def test_every_character_alone(cuts):
    text = "<think>\nreason </thin k> more</think>\n\nreply"
    assert _stream("qwen3", list(text)) == ("\nreason </thin k> more", "\n\nreply")
    assert _stream("qwen3", _chunk(text, cuts)) == ("\nreason </thin k> more", "\n\nreply")


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1"])
def test_think_block_cut_by_max_tokens_stays_reasoning(name):
    deltas, _ = _recorded("vllm/qwen3-0.6B/chat_completion_stream_finish_length.json")
    parser = REASONING_PARSERS[name]()
    streamed = [parser.feed(d) for d in deltas]
    # The tail that could start "</think>" is held back, and finish gives it out as reasoning.
    parser2 = REASONING_PARSERS[name]()
    for d in [*deltas[:-1], deltas[-1] + "</thi"]:
        parser2.feed(d)
    assert parser2.finish() == ("</thi", "")
    reasoning = "".join(r for r, _ in streamed) + parser.finish()[0]
    assert reasoning == "".join(deltas).removeprefix("<think>")
    assert all(c == "" for _, c in streamed)


def test_harmony_cut_inside_analysis_stays_reasoning():
    assert split_all(REASONING_PARSERS["gpt_oss"](), "<|channel|>analysis<|message|>we need to <|") == (
        "we need to <|", "")


def test_held_back_tail_is_short():
    """Per-token cost: the parser keeps only a tail shorter than a marker, not the whole text."""
    parser = REASONING_PARSERS["qwen3"]()
    parser.feed("<think>")
    for _ in range(1000):
        assert parser.feed("word ") == ("word ", "")
    assert parser.feed("</") == ("", "")
    assert len(parser._buf) == 2
    hp = REASONING_PARSERS["gpt_oss"]()
    hp.feed("<|channel|>analysis<|message|>")
    for _ in range(1000):
        hp.feed("word ")
    assert hp._buf == ""


def test_enable_thinking_false_switches_qwen3_off():
    assert reasoning_parser_for("qwen3", {"enable_thinking": False}) is None
    assert reasoning_parser_for("qwen3", {"enable_thinking": True}) is not None
    assert reasoning_parser_for("qwen3", None) is not None
    # DeepSeek-R1's template has no such switch: its prompt always opens the think block.
    assert reasoning_parser_for("deepseek_r1", {"enable_thinking": False}) is not None
    assert reasoning_parser_for(None) is None


def test_unknown_parser_name_is_config_error():
    with pytest.raises(ConfigError, match="no_such"):
        check_reasoning_parser("no_such")
    with pytest.raises(ConfigError):
        reasoning_parser_for("no_such")
    check_reasoning_parser(None)
    check_reasoning_parser("gpt_oss")


def test_stream_delta_holds_back_then_flushes_on_the_last_step():
    from dynamo.frontend.reasoning import message_parts, stream_delta

    parser = reasoning_parser_for("qwen3")
    assert stream_delta(parser, "<think>", role="assistant", final=False) == {"role": "assistant", "content": ""}
    assert stream_delta(parser, "a</th", role=None, final=False) == {"reasoning_content": "a"}
    assert stream_delta(parser, "", role=None, final=False) is None
    # Cut here (max_tokens): the held-back "</th" goes out as reasoning with the finish chunk.
    assert stream_delta(parser, "", role=None, final=True) == {"reasoning_content": "</th"}
    assert stream_delta(None, "x", role=None, final=False) == {"content": "x"}
    assert message_parts(reasoning_parser_for("qwen3"), "<think>r") == ("r", None)
    assert message_parts(reasoning_parser_for("qwen3"), "<think>r</think>c") == ("r", "c")
    assert message_parts(None, "<think>r</think>c") == (None, "<think>r</think>c")
