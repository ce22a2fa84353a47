"""Tool calls end to end: frontend + echo worker (``--dyn-tool-call-parser hermes``) driven by the official
``openai`` client. The echo worker returns the prompt's tokens, so a user message holding a call in the
model's own syntax comes back as model output and must be parsed into ``tool_calls``."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.deploy import QWEN, new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
]
CALL_W = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL_T = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'
# Two parallel calls; the system prompt the template writes for the tools holds a placeholder call
# ({"name": <function-name>, ...}) that is not JSON: it must stay content.
ASK = [{"role": "user", "content": f"{CALL_W}\n{CALL_T}"}]
# The echoed prompt holds <|im_end|> after the system turn; without ignore_eos the output would end there.
ECHO_ALL = {"extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    try:
        dep.spawn("echo", "-m", "dynamo.echo", "--model-path", str(QWEN), "--delay-ms", "0",
                  "--dyn-tool-call-parser", "hermes")
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield dep
    finally:
        dep.close()


@pytest.fixture(scope="module")
def client(deployment):
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key="unused", max_retries=0)


def _expected_calls(calls: list) -> None:
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
    assert all(c.type == "function" and c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2


def test_non_streaming_tool_calls(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **ECHO_ALL)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    _expected_calls(choice.message.tool_calls)
    raw = httpx.post(f"{client.base_url}chat/completions", timeout=10, json={
        "model": MODEL, "messages": ASK, "tools": TOOLS, "ignore_eos": True}).json()
    # A message's tool calls are OpenAI's objects exactly: index belongs to stream deltas only.
    assert [set(c) for c in raw["choices"][0]["message"]["tool_calls"]] == [{"id", "type", "function"}] * 2
    # The rest of the echoed prompt (system text with the placeholder call) is content.
    assert "<function-name>" in choice.message.content
    assert '"city": "Paris"' not in choice.message.content


def test_streaming_tool_calls(client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **ECHO_ALL, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    content = []
    for chunk in stream:
        ch = chunk.choices[0]
        if ch.delta.content:
            content.append(ch.delta.content)
        for tc in ch.delta.tool_calls or ():
            if tc.index not in calls:
                # The first delta of a call carries its id, type and name.
                assert tc.id and tc.type == "function" and tc.function.name
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in (0, 1)] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
    assert "<tool_call>\n{\"name\": \"get_weather\"" not in "".join(content)


def test_without_tools_or_with_tool_choice_none_the_text_is_content(client):
    plain = client.chat.completions.create(model=MODEL, messages=ASK, **ECHO_ALL)
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].finish_reason == "stop"
    assert '"name": "get_weather"' in plain.choices[0].message.content
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **ECHO_ALL, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"


def test_named_tool_choice_keeps_only_that_function(client):
    """With a named choice, a call to another function is not a call: it stays content."""
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **ECHO_ALL,
                                          tool_choice={"type": "function", "function": {"name": "get_time"}})
    msg = resp.choices[0].message
    assert [c.function.name for c in msg.tool_calls] == ["get_time"]
    assert '"name": "get_weather"' in msg.content


def test_tool_result_turn_renders(client):
    """The agent loop's next turn: the assistant's calls and the tool results go back through the chat
    template; the echoed prompt shows them rendered."""
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **ECHO_ALL)
    msg = first.choices[0].message
    history = [*ASK, msg.model_dump(exclude_none=True)]
    for call in msg.tool_calls:
        history.append({"role": "tool", "tool_call_id": call.id, "content": f"result of {call.function.name}"})
    nxt = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, **ECHO_ALL)
    text = nxt.choices[0].message.content
    assert "<tool_response>\nresult of get_weather\n</tool_response>" in text
    assert "<tool_response>\nresult of get_time\n</tool_response>" in text


BAD = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=["bad-schema", "unknown-choice", "unknown-function"])
def test_bad_tool_requests_are_400(deployment, client, extra, param):
    r = httpx.post(deployment.url + "/v1/chat/completions", timeout=10,
                   json={"model": MODEL, "messages": ASK, "ignore_eos": True, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ASK, **extra)
