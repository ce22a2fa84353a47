"""Integers a request carries to workers must fit msgpack's 64 bits: a bigger one is a 400 naming the
parameter (it was an OverflowError, a 500, in the encoder)."""

from __future__ import annotations

import msgspec
import pytest
from pydantic import ValidationError

from dynamo.llm.protocols.openai import ChatCompletionRequest, validation_error_to_openai
from dynamo.llm.protocols.responses import ResponsesRequest

pytestmark = pytest.mark.unit

HUGE = 2**70
MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("extra", "param"), [
    ({"seed": HUGE}, "seed"), ({"seed": -HUGE}, "seed"), ({"top_k": HUGE}, "top_k"),
    ({"max_tokens": HUGE}, "max_tokens"), ({"max_completion_tokens": HUGE}, "max_completion_tokens"),
    ({"min_tokens": HUGE}, "min_tokens"), ({"stop_token_ids": [1, HUGE]}, "stop_token_ids[1]"),
    ({"nvext": {"backend_instance_id": 2**64}}, "nvext.backend_instance_id"),
    ({"nvext": {"dp_rank": HUGE}}, "nvext.dp_rank"),
    ({"nvext": {"agent_hints": {"priority": HUGE}}}, "nvext.agent_hints.priority"),
    ({"nvext": {"agent_hints": {"osl": HUGE}}}, "nvext.agent_hints.osl"),
])
def test_out_of_range_integers_are_400(extra: dict, param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **extra})
    assert validation_error_to_openai(info.value)[1] == param


def test_the_extremes_still_encode() -> None:
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, "seed": 2**63 - 1, "top_k": 2**63 - 1,
                                                "nvext": {"backend_instance_id": 2**64 - 1}})
    msgspec.msgpack.encode([req.seed, req.top_k, req.nvext.backend_instance_id])
    with pytest.raises(ValidationError):
        ResponsesRequest.model_validate({"model": "m", "input": "x", "max_output_tokens": HUGE})


@pytest.mark.parametrize(("extra", "param"), [
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f",
                                                                                "arguments": {"a": [HUGE]}}}]}],
      }, "messages[0].tool_calls[0].function.arguments"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"maxItems": HUGE}}}]},
     "tools[0].function.parameters"),
    ({"guided_json": {"maximum": -HUGE}}, "guided_json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"maxLength": HUGE}}}},
     "response_format.json_schema.schema"),
])
def test_free_form_json_with_huge_integers_is_400(extra: dict, param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **extra})
    message, got = validation_error_to_openai(info.value)
    assert got == param and "64 bits" in message
