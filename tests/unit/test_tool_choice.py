"""tool_choice required / named: the guided-decoding constraint sent to the engine, and the frontend
reading the constrained output (or, from an engine that ignored it, the model's own syntax) back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dynamo.frontend.tool_call_output import message_parts, stream_delta, tool_calls_for
from dynamo.llm.preprocessor.request import OpenAIPreprocessor
from dynamo.llm.preprocessor.tool_choice import tool_choice_guided
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.openai import ChatCompletionRequest

pytestmark = pytest.mark.unit

QWEN3 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "models" / "Qwen3-0.6B"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "ping"}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def req(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "tools": TOOLS, **kw})


def test_named_choice_constrains_to_the_function_parameters() -> None:
    assert tool_choice_guided(req(tool_choice=NAMED)) == {"json": WEATHER}


def test_required_constrains_to_an_array_of_offered_calls() -> None:
    spec = tool_choice_guided(req(tool_choice="required"))
    assert spec is not None
    schema = spec["json"]
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "ping", "parameters": {}}],
                        schema)
    for bad in ([], [{"name": "rm", "parameters": {}}], [{"name": "get_weather", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("kw", [
    {"tool_choice": "auto"}, {"tool_choice": "none"}, {},
    # the request asks for other structured output: that one wins, the calls are just parsed
    {"tool_choice": "required", "response_format": {"type": "json_object"}},
    {"tool_choice": NAMED, "guided_regex": "[a-z]+"},
])
def test_no_constraint(kw: dict[str, Any]) -> None:
    assert tool_choice_guided(req(**kw)) is None


def test_required_with_refs_is_not_constrained() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "$defs": {"c": {"type": "string"}}, "type": "object", "properties": {"x": {"$ref": "#/$defs/c"}}}}}]
    assert tool_choice_guided(req(tools=tools, tool_choice="required")) is None
    assert tool_choice_guided(req(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})) \
        is not None


def test_the_engine_request_carries_the_constraint() -> None:
    pp = OpenAIPreprocessor.from_card(ModelDeploymentCard(name="q", model_path=str(QWEN3), context_length=4096))
    r = pp.preprocess_chat(req(tool_choice=NAMED)).request
    assert r.sampling_options.guided_decoding == {"json": WEATHER}
    r = pp.preprocess_chat(req(tool_choice="auto")).request
    assert r.sampling_options.guided_decoding is None


def _run(request: ChatCompletionRequest, texts: list[str], parser: str | None = "hermes") -> tuple[str, list, Any]:
    """Feed ``texts`` as streamed content deltas, the last one finishing with ``stop``."""
    state = tool_calls_for(parser, request)
    assert state is not None
    content, calls, finish = [], [], None
    for k, t in enumerate(texts):
        delta, fr = stream_delta(state, {"content": t}, "stop" if k == len(texts) - 1 else None)
        if delta is None:
            continue
        content.append(delta.get("content") or "")
        calls.extend(delta.get("tool_calls") or [])
        finish = fr or finish
    # The same output in one piece (non-streaming) gives the same split.
    whole, whole_calls, whole_finish = message_parts(tool_calls_for(parser, request), "".join(texts), "stop")
    assert (whole or "", whole_finish) == ("".join(content), finish)
    assert [c["function"] for c in whole_calls or []] == [c["function"] for c in calls]
    assert [c["index"] for c in calls] == list(range(len(calls)))
    return "".join(content), [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls], finish


def test_constrained_named_output_is_the_arguments() -> None:
    content, calls, finish = _run(req(tool_choice=NAMED), ['{"city": ', '"Paris"}'], parser=None)
    assert content == "" and finish == "tool_calls"
    assert calls == [("get_weather", {"city": "Paris"})]


def test_constrained_required_output_is_an_array_of_calls() -> None:
    content, calls, finish = _run(req(tool_choice="required"),
                                  ['[{"name": "ping", "parameters": {}}, ', '{"name": "get_weather", ',
                                   '"parameters": {"city": "Oslo"}}]'])
    assert content == "" and finish == "tool_calls"
    assert calls == [("ping", {}), ("get_weather", {"city": "Oslo"})]


def test_engine_that_ignored_the_constraint_falls_back_to_the_card_parser() -> None:
    content, calls, finish = _run(req(tool_choice="required"),
                                  ["Sure <tool_", 'call>{"name": "ping", "arguments": {}}</tool_call>'])
    assert content == "Sure " and calls == [("ping", {})] and finish == "tool_calls"
    content, calls, finish = _run(req(tool_choice="required"), ["no call at all"], parser=None)
    assert content == "no call at all" and calls == [] and finish == "stop"


def test_auto_without_a_card_parser_leaves_content() -> None:
    assert tool_calls_for(None, req(tool_choice="auto")) is None
    assert tool_calls_for("hermes", req(tool_choice="none")) is None
    assert stream_delta(None, {"content": "x"}, "stop") == ({"content": "x"}, "stop")


def test_streamed_deltas_keep_reasoning_and_hold_a_marker_prefix() -> None:
    state = tool_calls_for("hermes", req())
    assert stream_delta(state, {"reasoning_content": "hmm"}, None) == ({"reasoning_content": "hmm"}, None)
    assert stream_delta(state, {"content": "ok <tool"}, None) == ({"content": "ok "}, None)
    assert stream_delta(state, {"content": "_call>"}, None) == (None, None)
    delta, fr = stream_delta(state, {"content": '{"name": "ping", "arguments": {}}</tool_call>'}, "stop")
    assert fr == "tool_calls" and "content" not in delta
    assert delta["tool_calls"][0]["index"] == 0 and delta["tool_calls"][0]["function"]["name"] == "ping"
    # cut by max_tokens mid-call: the text is content and the reason stays length
    state = tool_calls_for("hermes", req())
    assert stream_delta(state, {"content": '<tool_call>{"name": "pi'}, "length") == (
        {"content": '<tool_call>{"name": "pi'}, "length")


def test_worker_flag_accepts_only_known_parsers(capsys: pytest.CaptureFixture[str]) -> None:
    from dynamo.echo.__main__ import build_parser

    assert build_parser().parse_args(["--dyn-tool-call-parser", "qwen3_coder"]).dyn_tool_call_parser == "qwen3_coder"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--dyn-tool-call-parser", "hermes2"])
    assert "hermes2" in capsys.readouterr().err
