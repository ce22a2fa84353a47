"""``/v1/responses`` end to end with the official ``openai`` client (``client.responses.create``): a mocker
that thinks (reasoning items), an echo worker with the hermes parser (function calls and the agent loop's
next turn), streaming events, logprobs, and bad input as 400s."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.deploy import QWEN, new_deployment

pytestmark = pytest.mark.e2e

MOCKER = "Qwen3-0.6B"
ECHO = "echo"
REASONING = json.dumps({"start_thinking_token_id": 151667, "end_thinking_token_id": 151668,
                        "thinking_ratio": 0.5})
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ECHO_ALL = {"extra_body": {"nvext": {"ignore_eos": True}}}


@pytest.fixture(scope="module")
def client():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100", "--reasoning", REASONING, "--dyn-reasoning-parser", "qwen3")
        dep.spawn("echo", "-m", "dynamo.echo", "--model-path", str(QWEN), "--model-name", ECHO, "--delay-ms", "0",
                  "--dyn-tool-call-parser", "hermes")
        dep.start_frontend()
        dep.wait_models({MOCKER, ECHO})
        yield openai.OpenAI(base_url=dep.url + "/v1", api_key="unused", max_retries=0)
    finally:
        dep.close()


def test_non_streaming_reasoning_then_message(client):
    resp = client.responses.create(model=MOCKER, input="Why is the sky blue?", max_output_tokens=20)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    thought = resp.output[0].content[0].text
    assert thought and "think>" not in thought
    assert resp.output_text and "think>" not in resp.output_text
    # The mocker always runs to max_tokens: the response says it was cut.
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 20
    assert resp.usage.total_tokens == resp.usage.input_tokens + 20


def test_input_items_render_like_the_chat_messages(client):
    resp = client.responses.create(model=MOCKER, instructions="Be brief.", max_output_tokens=4, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": "Why is the sky blue?"},
    ])
    chat = client.chat.completions.create(model=MOCKER, max_tokens=4, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why is the sky blue?"}])
    assert resp.usage.input_tokens == chat.usage.prompt_tokens


def test_streaming_events(client):
    events = list(client.responses.create(model=MOCKER, input="Why is the sky blue?", max_output_tokens=20,
                                          stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    done = [e.item.type for e in events if e.type == "response.output_item.done"]
    assert added == done == ["reasoning", "message"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    (text_done,) = [e for e in events if e.type == "response.output_text.done"]
    assert text and thought and text_done.text == text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 20
    # every text delta sits between its item's added and done events
    first_delta = types.index("response.output_text.delta")
    assert types.index("response.content_part.added", types.index("response.reasoning_text.done")) < first_delta
    assert types.index("response.output_text.done") > max(i for i, t in enumerate(types)
                                                          if t == "response.output_text.delta")


def test_logprobs_on_output_text(client):
    resp = client.responses.create(model=MOCKER, input="Hi", max_output_tokens=10, top_logprobs=2,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    part = resp.output[-1].content[0]
    # with thinking off the whole output is the message: one logprob per token
    assert len(part.logprobs) == 10
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in part.logprobs)
    assert "".join(lp.token for lp in part.logprobs) == part.text


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_and_the_next_turn(client, stream):
    kw = {"model": ECHO, "input": [{"role": "user", "content": CALL}], "tools": TOOLS, **ECHO_ALL}
    if stream:
        events = list(client.responses.create(**kw, stream=True))
        calls = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
        args_done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert [e.arguments for e in args_done] == [c.arguments for c in calls]
        assert events[-1].type == "response.completed"
    else:
        resp = client.responses.create(**kw)
        calls = [item for item in resp.output if item.type == "function_call"]
        assert resp.status == "completed"
    (call,) = calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_")
    # The agent loop's next turn: the call and its output go back as input items.
    nxt = client.responses.create(model=ECHO, tools=TOOLS, **ECHO_ALL, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}])
    # the echo worker returns the rendered prompt: the tool result is in it, in the template's tool turn
    assert "<tool_response>\n22 C and sunny\n</tool_response>" in nxt.output_text


@pytest.mark.parametrize("kwargs,fragment", [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": []}, "input"),
    ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]},
     "not a valid JSON schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 1}}}},
     "text.format.schema"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
])
def test_bad_requests_are_400(client, kwargs, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MOCKER, **kwargs)
    assert fragment in err.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_sdk_stream_helper_accumulates_the_same_response(client):
    # ``responses.stream`` rebuilds the response from the events and checks them against the final one
    # (the echo worker ends at the prompt's first end-of-turn, so the response completes)
    with client.responses.stream(model=ECHO, input="Why is the sky blue?") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == text and "Why is the sky blue?" in text
    assert [item.type for item in final.output] == ["message"]
