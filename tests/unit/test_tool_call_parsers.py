"""Tool-call parsers: one table of real model output formats per parser, each also streamed in random
chunkings (a call split anywhere must parse the same), plus text that only looks like a call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.llm.postprocessor.parsers.tool_calls import (
    TOOL_CALL_PARSERS,
    make_tool_call_parser,
    parse_tool_calls,
)
from dynamo.runtime import errors

STREAMS = Path("/work/shared/data/dynamo/engine_streams")

# (parser, model text, expected content, expected [(name, arguments object)])
CASES: list[tuple[str, str, str, list[tuple[str, dict]]]] = [
    ("hermes", 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Sure.\n", [("get_weather", {"city": "Paris"})]),
    ("hermes", '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
               '<tool_call>{"name": "b", "arguments": {"y": [1, 2]}}</tool_call>',
     "\n", [("a", {"x": 1}), ("b", {"y": [1, 2]})]),
    ("hermes", "no calls here, just <b>html</b>", "no calls here, just <b>html</b>", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "",
     [("get_weather", {"city": "Paris"})]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"k": "v"}}', "",
     [("a", {}), ("b", {"k": "v"})]),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3_json", "The weather is fine {really}.", "The weather is fine {really}.", []),
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]', "",
     [("a", {"x": 1}), ("b", {})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "", [("get_weather", {"city": "Paris"})]),
    ("mistral", "Use [brackets] freely.", "Use [brackets] freely.", []),
    ("pythonic", '[get_weather(city="Paris", days=3), ping()]', "",
     [("get_weather", {"city": "Paris", "days": 3}), ("ping", {})]),
    ("pythonic", "[1, 2, 3] is a list", "[1, 2, 3] is a list", []),
    ("pythonic", '[__import__("os").system("true")]', '[__import__("os").system("true")]', []),
    ("pythonic", "[f(x=open('/etc/passwd'))]", "[f(x=open('/etc/passwd'))]", []),
    ("deepseek_v3",
     "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
     '{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n'
     '{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
     "Let me check.", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    ("deepseek_v3",  # V3.1 layout
     '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Oslo"}<｜tool▁call▁end｜>'
     "<｜tool▁calls▁end｜>", "", [("get_weather", {"city": "Oslo"})]),
    ("qwen3_coder",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
     "", [("get_weather", {"city": "San Francisco", "days": 3})]),
    ("harmony",
     "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
     '{"location":"Tokyo"}<|call|>', "", [("get_weather", {"location": "Tokyo"})]),
    ("harmony",
     "<|start|>assistant<|channel|>commentary<|message|>Checking the weather.<|end|>"
     "<|start|>assistant<|channel|>commentary to=functions.a <|constrain|>json<|message|>{}<|call|>",
     "<|start|>assistant<|channel|>commentary<|message|>Checking the weather.<|end|>", [("a", {})]),
]

# Malformed calls: the text comes back as content, unchanged.
MALFORMED = [
    ("hermes", '<tool_call>{"name": "f", "arguments": {"x": }</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"x": 1}}'),  # cut off by max_tokens
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),
    ("hermes", '<tool_call>["f"]</tool_call>'),
    ("llama3_json", '{"name": "f", "parameters": {"x": 1'),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": '),
    ("pythonic", "[f(a=1, b=)]"),
    ("pythonic", "[f(1, 2)]"),
    ("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{bad}\n```"
                    "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>"),
    ("harmony", "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{not json<|call|>"),
]


def _check(result_calls: list, expected: list[tuple[str, dict]]) -> None:
    assert [(c.name, json.loads(c.arguments)) for c in result_calls] == expected
    for c in result_calls:
        assert c.id.startswith("call_") and len(c.id) > 10
        shape = c.to_openai()
        assert shape["type"] == "function" and set(shape["function"]) == {"name", "arguments"}
    assert len({c.id for c in result_calls}) == len(result_calls)


def _stream(name: str, chunks: list[str], tool_names: set[str] | None = None) -> tuple[str, list]:
    p = make_tool_call_parser(name, tool_names)
    content, calls = [], []
    for ch in chunks:
        d = p.feed(ch)
        content.append(d.content)
        calls.extend(d.calls)
    d = p.finish()
    content.append(d.content)
    calls.extend(d.calls)
    return "".join(content), calls


@pytest.mark.parametrize("name,text,content,expected", CASES)
def test_whole_output(name: str, text: str, content: str, expected: list) -> None:
    res = parse_tool_calls(name, text)
    assert res.content == content
    _check(res.calls, expected)


@pytest.mark.parametrize("name,text,content,expected", CASES)
def test_char_by_char(name: str, text: str, content: str, expected: list) -> None:
    got_content, calls = _stream(name, list(text))
    assert got_content == content
    _check(calls, expected)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_chunkings(case: tuple, data: st.DataObject) -> None:
    name, text, content, expected = case
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=12)))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[i:j]]
    got_content, calls = _stream(name, chunks)
    assert got_content == content
    _check(calls, expected)


@pytest.mark.parametrize("name,text", MALFORMED)
def test_malformed_is_content(name: str, text: str) -> None:
    res = parse_tool_calls(name, text)
    assert res.calls == [] and res.content == text
    got_content, calls = _stream(name, list(text))
    assert calls == [] and got_content == text


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(TOOL_CALL_PARSERS)), pieces=st.lists(
    st.sampled_from([*list('<>{}[]()"=:,;|_ \nabcf'), "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|call|>", "<|message|>", "<｜tool▁sep｜>"])))
def test_arbitrary_text_never_raises(name: str, pieces: list[str]) -> None:
    text = "".join(pieces)
    content, calls = _stream(name, [text[: len(text) // 2], text[len(text) // 2:]])
    if not calls:
        assert content == text


def test_content_released_before_the_call_completes() -> None:
    """Plain text is emitted as it arrives; only a possible marker prefix is held back."""
    p = make_tool_call_parser("hermes")
    assert p.feed("Hello wor").content == "Hello wor"
    assert p.feed("ld <tool").content == "ld "
    assert p.feed("_call>{").content == ""
    d = p.feed('"name": "f", "arguments": {}}</tool_call> done')
    assert [c.name for c in d.calls] == ["f"] and d.content == " done"


def test_unknown_function_stays_content() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    res = parse_tool_calls("hermes", text, tool_names={"get_weather"})
    assert res.calls == [] and res.content == text


def test_unknown_parser_name() -> None:
    with pytest.raises(errors.InvalidArgument):
        make_tool_call_parser("nope")


@pytest.mark.parametrize("recording,parser", [
    ("vllm/qwen3-0.6B/chat_completion_stream_8f33c28b-tool.json", "hermes"),
    ("sglang/qwen3-0.6B/chat_completion_stream_c42ba578-tool.json", "hermes"),
    ("sglang/gpt-oss-20b/chat_completion_stream_19c97899-tool.json", "harmony"),
])
def test_recorded_engine_streams(recording: str, parser: str) -> None:
    """Real engine deltas, fed as recorded: the calls match what the engine's own server returned."""
    path = STREAMS / recording
    if not path.exists():
        pytest.skip(f"{path} not present")
    rec = json.loads(path.read_text())
    chunks = [c["data"]["choices"][0]["delta"].get("content") or "" for c in rec["input_stream"]
              if c.get("data", {}).get("choices")]
    _, calls = _stream(parser, chunks)
    expected = rec["expected_output"]["tool_calls"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (e["function"]["name"], json.loads(e["function"]["arguments"])) for e in expected]


@pytest.mark.parametrize("name", ["hermes", "deepseek_v3", "harmony", "qwen3_coder"])
def test_long_call_streamed_in_small_deltas_is_linear(name: str) -> None:
    """The parser sits on the per-token path: a long call fed a few characters at a time must not rescan
    its whole buffer on every delta (quadratic: over 20 s for this one)."""
    import time

    text = {"hermes": '<tool_call>{"name": "f", "arguments": {"x": "%s"}}</tool_call>',
            "deepseek_v3": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{"x": "%s"}<｜tool▁call▁end｜>'
                           "<｜tool▁calls▁end｜>",
            "harmony": '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"x": "%s"}<|call|>',
            "qwen3_coder": "<tool_call>\n<function=f>\n<parameter=x>\n%s\n</parameter>\n</function>\n</tool_call>",
            }[name] % ("y" * 400_000)
    t0 = time.perf_counter()
    _, calls = _stream(name, [text[i:i + 4] for i in range(0, len(text), 4)])
    assert [c.name for c in calls] == ["f"]
    assert time.perf_counter() - t0 < 4.0
