"""Structured output through the official ``openai`` client: a bad schema or regex is a 400 with
OpenAI's error body before any worker is involved; a good one is served."""

from __future__ import annotations

import openai
import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
MESSAGES = [{"role": "user", "content": "Where is Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


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


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
    {"type": "json_object"},
])
def test_response_format_is_served(client, fmt):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, response_format=fmt)
    assert resp.usage.completion_tokens == 5


def test_uncompilable_schema_is_400(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object",
                                                                               "required": "city"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, response_format=fmt)
    body = err.value.body
    assert body["param"] == "response_format.json_schema.schema"
    assert "not a valid JSON schema" in body["message"] and "required" in body["message"]
    assert body["code"] == 400


@pytest.mark.parametrize("extra,param", [
    ({"guided_regex": "([0-9]"}, "guided_regex"),
    ({"guided_json": {"type": "strng"}}, "guided_json"),
    ({"nvext": {"guided_choice": []}}, "nvext.guided_choice"),
])
def test_bad_guided_options_are_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body=extra)
    assert err.value.body["param"] == param
