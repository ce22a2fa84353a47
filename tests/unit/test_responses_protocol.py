"""Responses API requests -> chat requests (the pipeline they run on)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dynamo.llm.protocols.responses import ResponsesRequest
from dynamo.runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit


def to_chat(**kw):
    return ResponsesRequest.model_validate({"model": "m", **kw}).to_chat()


def test_string_input_and_instructions() -> None:
    chat = to_chat(input="hi", instructions="be brief", max_output_tokens=7, temperature=0.5, top_logprobs=3)
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (chat.max_tokens, chat.temperature, chat.logprobs, chat.top_logprobs) == (7, 0.5, True, 3)
    assert chat.n is None and chat.stream is False


def test_items_become_messages_with_tool_turns() -> None:
    chat = to_chat(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\": \"A\"}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\": \"B\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
    ], tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "w"})
    roles = [m.role for m in chat.messages]
    assert roles == ["user", "assistant", "tool", "tool"]
    assert [c.id for c in chat.messages[1].tool_calls] == ["c1", "c2"]  # parallel calls share one turn
    assert chat.messages[2].tool_call_id == "c1" and chat.messages[2].content == "sunny"
    assert chat.tools[0].function.name == "w" and chat.tool_choice.function.name == "w"


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object"}
    chat = to_chat(input="x", text={"format": {"type": "json_schema", "name": "o", "schema": schema}})
    assert chat.response_format.type == "json_schema" and chat.response_format.json_schema.schema_ == schema
    assert to_chat(input="x", text={"format": {"type": "text"}}).response_format is None


@pytest.mark.parametrize("kw,fragment", [
    ({"input": [{"type": "message", "role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]: a function_call needs"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]},
     "tools[0].function.parameters"),
])
def test_bad_items_name_the_input(kw, fragment) -> None:
    with pytest.raises(InvalidArgument) as err:
        to_chat(**kw)
    assert fragment in str(err.value)


def test_stateful_features_are_refused() -> None:
    with pytest.raises(ValidationError, match="previous_response_id is not supported"):
        ResponsesRequest.model_validate({"model": "m", "input": "x", "previous_response_id": "resp_1"})
