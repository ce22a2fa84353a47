"""Reasoning split then tool-call split, as the chat path chains them, on recorded engine streams: the
result matches what the engine's own server answered (reasoning_content, content, tool_calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamo.frontend import reasoning, tool_call_output
from dynamo.llm.postprocessor.parsers.reasoning import reasoning_parser_for
from dynamo.llm.protocols.openai import ChatCompletionRequest

pytestmark = pytest.mark.unit

STREAMS = Path("/work/shared/data/dynamo/engine_streams")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("recording,reasoning_name,tool_name", [
    ("vllm/qwen3-0.6B/chat_completion_stream_8f33c28b-tool.json", "qwen3", "hermes"),
    ("sglang/qwen3-0.6B/chat_completion_stream_c42ba578-tool.json", "qwen3", "hermes"),
    ("sglang/gpt-oss-20b/chat_completion_stream_19c97899-tool.json", "gpt_oss", "harmony"),
])
@pytest.mark.parametrize("streaming", [True, False])
def test_recorded_stream_through_both_parsers(recording: str, reasoning_name: str, tool_name: str,
                                              streaming: bool) -> None:
    path = STREAMS / recording
    if not path.exists():
        pytest.skip(f"{path} not present")
    rec = json.loads(path.read_text())
    texts = [c["data"]["choices"][0]["delta"].get("content") or "" for c in rec["input_stream"]
             if c.get("data", {}).get("choices")]
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "w?"}],
                                                "tools": TOOLS})
    rp = reasoning_parser_for(reasoning_name, req.template_kwargs)
    tc = tool_call_output.tool_calls_for(tool_name, req)
    if streaming:
        thought, content, calls, finish = [], [], [], None
        for k, t in enumerate(texts):
            fr = "stop" if k == len(texts) - 1 else None
            delta = reasoning.stream_delta(rp, t, role=None, final=fr is not None)
            delta, fr = tool_call_output.stream_delta(tc, delta, fr)
            if delta is None:
                continue
            thought.append(delta.get("reasoning_content") or "")
            content.append(delta.get("content") or "")
            calls.extend(delta.get("tool_calls") or [])
            finish = fr or finish
        got_thought, got_content = "".join(thought), "".join(content)
    else:
        got_thought, text = reasoning.message_parts(rp, "".join(texts))
        got_content, calls, finish = tool_call_output.message_parts(tc, text, "stop")
    expected = rec["expected_output"]
    assert finish == "tool_calls"
    assert (got_thought or "").strip() == expected["reasoning_content"].strip()
    assert (got_content or "").strip() == expected["normal_content"].strip()
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (e["function"]["name"], json.loads(e["function"]["arguments"])) for e in expected["tool_calls"]]
