"""OpenAI request validation (reference §4.3) and the dict response builders."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from dynamo.llm.protocols.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion_id,
    chat_delta,
    chat_usage_chunk,
    completion_id,
    error_body,
    usage_dict,
    validation_error_to_openai,
)

pytestmark = pytest.mark.unit

MSGS = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSGS, **kw}


def comp(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "hello", **kw}


BAD_CHAT: list[tuple[dict[str, Any], str, str]] = [
    # (body, expected param, substring of the message)
    ({"model": "m", "messages": []}, "messages", "must not be empty"),
    ({"model": "m", "messages": "hi"}, "messages", "valid list"),
    ({"messages": MSGS}, "model", "missing"),
    ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "'bot'"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0]", "content is required"),
    ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "missing"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got 5"),
    (chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (chat(max_tokens=-5), "max_tokens", "got -5"),
    (chat(max_completion_tokens=0), "max_completion_tokens", "greater than or equal to 1"),
    (chat(max_tokens="ten"), "max_tokens", "valid integer"),
    (chat(temperature=2.5), "temperature", "less than or equal to 2"),
    (chat(temperature=-0.1), "temperature", "greater than or equal to 0"),
    (chat(temperature="hot"), "temperature", "valid number"),
    (chat(top_p=1.5), "top_p", "less than or equal to 1"),
    (chat(top_p=-0.5), "top_p", "greater than or equal to 0"),
    (chat(min_p=2), "min_p", "less than or equal to 1"),
    (chat(presence_penalty=2.5), "presence_penalty", "less than or equal to 2"),
    (chat(frequency_penalty=-3), "frequency_penalty", "greater than or equal to -2"),
    (chat(repetition_penalty=3), "repetition_penalty", "less than or equal to 2"),
    (chat(top_k=0), "top_k", "-1"),
    (chat(top_k=-2), "top_k", "-1"),
    (chat(n=0), "n", "greater than or equal to 1"),
    (chat(n=129), "n", "less than or equal to 128"),
    (chat(top_logprobs=21, logprobs=True), "top_logprobs", "less than or equal to 20"),
    (chat(top_logprobs=2), "top_logprobs", "requires logprobs"),
    (chat(stop=["x"] * 33), "stop", "at most 32"),
    (chat(stop=5), "stop", "got 5"),
    (chat(stop="x" * 8192), "stop", "at most 1024 characters"),
    (chat(stop=["ok", "y" * 1025]), "stop", "at most 1024 characters"),
    (chat(logit_bias={"12": 101}), "logit_bias", "[-100, 100]"),
    (chat(stream_options={"include_usage": True}), "stream_options", "stream is true"),
    (chat(stream=False, stream_options={"include_usage": True}), "stream_options", "stream is true"),
    (chat(tool_choice="sometimes"), "tool_choice", "'none', 'auto' or 'required'"),
    (chat(tools=[{"type": "function", "function": {"name": "x" * 97}}]), "tools[0].function.name", "at most 96"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}]),
     "tools[0].function.parameters", "not a valid JSON schema"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "tools[0].function.parameters", "valid dictionary"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice", "'g'"),
    (chat(tool_choice="required"), "tool_choice", "requires tools"),
    (chat(tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice", "requires tools"),
    (chat(min_tokens=10, max_tokens=5), "min_tokens", "must not exceed max_tokens"),
    (chat(min_tokens=-1), "min_tokens", "greater than or equal to 0"),
    (chat(best_of=21), "best_of", "less than or equal to 20"),
]

BAD_COMPLETION: list[tuple[dict[str, Any], str, str]] = [
    (comp(prompt=[]), "prompt", "empty array"),
    (comp(prompt=5), "prompt", "array of token ids"),
    (comp(prompt=[1, -2]), "prompt", "non-negative"),
    (comp(prompt=[1, True]), "prompt", "non-negative integers"),
    (comp(prompt=[[1, 2], []]), "prompt", "non-empty array"),
    (comp(prompt=["a", 1]), "prompt", "mix"),
    (comp(logprobs=6), "logprobs", "less than or equal to 5"),
    (comp(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (comp(stop="x" * 8192), "stop", "at most 1024 characters"),
    (comp(stream_options={"include_usage": True}), "stream_options", "stream is true"),
]


@pytest.mark.parametrize(("body", "param", "fragment"), BAD_CHAT)
def test_bad_chat_requests(body: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    message, got_param = validation_error_to_openai(info.value)
    assert got_param == param
    assert message.startswith("Validation: ")
    assert param in message
    assert fragment in message


@pytest.mark.parametrize(("body", "param", "fragment"), BAD_COMPLETION)
def test_bad_completion_requests(body: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    message, got_param = validation_error_to_openai(info.value)
    assert got_param == param
    assert fragment in message


def test_validation_from_json_bytes() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(orjson.dumps(chat(temperature=9)))
    assert validation_error_to_openai(info.value)[1] == "temperature"


def test_good_chat_request_and_unknown_fields_ignored() -> None:
    req = ChatCompletionRequest.model_validate(chat(
        stream=True, stream_options={"include_usage": True}, temperature=0, top_p=1, top_k=-1,
        stop="END", max_completion_tokens=7, max_tokens=99, some_future_field={"x": 1},
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        chat_template_kwargs={"enable_thinking": False}, nvext={"ignore_eos": True, "backend_instance_id": 7},
    ))
    assert not hasattr(req, "some_future_field")
    assert req.effective_max_tokens == 7  # max_completion_tokens wins
    assert req.stop_list == ["END"]
    assert req.include_usage
    assert req.template_kwargs == {"enable_thinking": False}
    assert req.nvext is not None and req.nvext.backend_instance_id == 7
    # nested message objects keep extra keys for templates
    dumped = req.messages[1].model_dump(exclude_none=True)
    assert dumped["content"][1]["image_url"] == {"url": "u"}


def test_boundary_values_accepted() -> None:
    ChatCompletionRequest.model_validate(chat(
        temperature=2, top_p=0, presence_penalty=-2, frequency_penalty=2, repetition_penalty=0, min_p=1,
        n=128, top_logprobs=20, logprobs=True, stop=["s" * 1024] * 32, logit_bias={"1": -100}, top_k=1,
    ))
    CompletionRequest.model_validate(comp(logprobs=5, best_of=20, n=2))


def test_completion_prompt_shapes() -> None:
    assert CompletionRequest.model_validate(comp(prompt="x")).prompts == ["x"]
    assert CompletionRequest.model_validate(comp(prompt=["a", "b"])).prompts == ["a", "b"]
    assert CompletionRequest.model_validate(comp(prompt=[1, 2, 3])).prompts == [[1, 2, 3]]
    assert CompletionRequest.model_validate(comp(prompt=[[1], [2, 3]])).prompts == [[1], [2, 3]]


def test_tool_choice_variants() -> None:
    assert ChatCompletionRequest.model_validate(chat(tool_choice="none")).tool_choice_name == "none"
    # A named choice must name one of the offered tools (OpenAI answers 400 otherwise).
    named = ChatCompletionRequest.model_validate(chat(tool_choice={"type": "function", "function": {"name": "f"}},
                                                      tools=[{"type": "function", "function": {"name": "f"}}]))
    assert named.tool_choice_name == "function"


# -- response builders --------------------------------------------------------------------------------


def test_chat_chunk_shape_and_aggregate() -> None:
    cid = chat_completion_id("r1")
    assert cid == "chatcmpl-r1" and completion_id("r1") == "cmpl-r1"
    chunks = [
        chat_chunk(cid, "m", 5, chat_delta("", role="assistant")),
        chat_chunk(cid, "m", 5, chat_delta("Hel")),
        chat_chunk(cid, "m", 5, chat_delta(reasoning_content="think")),
        chat_chunk(cid, "m", 5, chat_delta("lo"), finish_reason="stop", stop_reason="END"),
        chat_usage_chunk(cid, "m", 5, usage_dict(10, 3, cached_tokens=4)),
    ]
    first = chunks[1]
    assert first == {"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None,
                                  "finish_reason": None}]}
    orjson.dumps(first)


def test_error_bodies() -> None:
    assert error_body("Validation: bad", 400) == {"message": "Validation: bad", "type": "Bad Request", "code": 400}
    assert error_body("Model not found", 404, param="model", nested=True) == {
        "error": {"message": "Model not found", "type": "Not Found", "param": "model", "code": 404}}
    assert error_body("x", 503)["type"] == "Service Unavailable"
