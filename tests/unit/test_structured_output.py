"""Structured output: response_format and guided_* options are checked before they reach an engine,
and reach it as one guided-decoding spec."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dynamo.llm.preprocessor.request import OpenAIPreprocessor
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.openai import ChatCompletionRequest, CompletionRequest, validation_error_to_openai
from dynamo.vllm import sampling
from tests.support.deploy import QWEN

pytestmark = pytest.mark.unit

MSGS = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSGS, **kw}


BAD: list[tuple[dict[str, Any], str, str]] = [
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}),
     "response_format.json_schema.schema", "not a valid JSON schema"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                    "schema": {"properties": {"a": {"minimum": "0"}}}}}),
     "response_format.json_schema.schema", "(at properties/a/minimum)"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema", "needs json_schema.schema"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
     "response_format.json_schema.schema", "valid dictionary"),
    (chat(response_format={"type": "xml"}), "response_format.type", "'text', 'json_object' or 'json_schema'"),
    (chat(guided_json={"type": 5}), "guided_json", "not a valid JSON schema"),
    (chat(guided_json="{not json"), "guided_json", "not JSON"),
    (chat(guided_regex="[a-z"), "guided_regex", "not a valid regular expression"),
    (chat(guided_regex="(?P<x>a)(?P<x>b)"), "guided_regex", "not a valid regular expression"),
    (chat(guided_choice=[]), "guided_choice", "non-empty list"),
    (chat(guided_choice=["a", ""]), "guided_choice", "non-empty list"),
    (chat(guided_grammar="  "), "guided_grammar", "must not be empty"),
    (chat(guided_regex="a", guided_choice=["a"]), "guided_choice", "only one of guided_regex, guided_choice"),
    (chat(nvext={"guided_regex": "("}), "nvext.guided_regex", "not a valid regular expression"),
    (chat(nvext={"guided_json": {"type": "nope"}}), "nvext.guided_json", "not a valid JSON schema"),
]


@pytest.mark.parametrize(("body", "param", "fragment"), BAD)
def test_bad_structured_output_is_a_400_naming_the_parameter(body: dict[str, Any], param: str, fragment: str) -> None:
    for model, b in ((ChatCompletionRequest, body), (CompletionRequest, {**{k: v for k, v in body.items()
                                                                           if k != "messages"}, "prompt": "p"})):
        with pytest.raises(ValidationError) as info:
            model.model_validate(b)
        message, got = validation_error_to_openai(info.value)
        assert got == param, message
        assert fragment in message


@pytest.fixture(scope="module")
def pp() -> OpenAIPreprocessor:
    return OpenAIPreprocessor.from_card(ModelDeploymentCard(name="q", model_path=str(QWEN), context_length=4096))


@pytest.mark.parametrize(("body", "spec"), [
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}),
     {"json": SCHEMA}),
    (chat(response_format={"type": "json_object"}), {"json_object": True}),
    (chat(response_format={"type": "text"}), None),
    (chat(guided_json='{"type": "object"}'), {"json": {"type": "object"}}),  # a string schema arrives parsed
    (chat(guided_regex=r"\d{3}-\d{4}"), {"regex": r"\d{3}-\d{4}"}),
    (chat(guided_choice=["yes", "no"]), {"choice": ["yes", "no"]}),
    (chat(guided_grammar="root ::= \"a\""), {"grammar": "root ::= \"a\""}),
    (chat(nvext={"guided_json": SCHEMA}), {"json": SCHEMA}),
])
def test_valid_options_reach_the_engine_as_one_spec(pp: OpenAIPreprocessor, body: dict[str, Any],
                                                    spec: dict[str, Any] | None) -> None:
    request = pp.preprocess_chat(ChatCompletionRequest.model_validate(body)).request
    assert request.sampling_options.guided_decoding == spec
    # ... in a form the vLLM worker accepts
    assert sampling.guided_decoding(request) == spec


def test_a_schema_seen_again_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonschema import validators

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}}
    body = chat(tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}])
    ChatCompletionRequest.model_validate(body)
    calls = []
    real = validators.validator_for
    monkeypatch.setattr(validators, "validator_for", lambda s, *a, **kw: calls.append(s) or real(s, *a, **kw))
    ChatCompletionRequest.model_validate(body)  # remembered (key order does not matter)
    ChatCompletionRequest.model_validate(chat(guided_json=dict(reversed(schema.items()))))
    assert calls == []
    bad = {"type": "object", "properties": {"n": {"type": "integer", "minimum": "7"}}}
    for _ in range(2):  # an invalid schema is never remembered
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate(chat(guided_json=bad))
    assert sum(c == bad for c in calls) == 2
