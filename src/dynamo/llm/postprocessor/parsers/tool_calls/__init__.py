"""Tool-call parsers: split a model's output text into content and OpenAI tool calls.

``make_tool_call_parser(name, tool_names)`` returns a fresh streaming parser for one choice; feed it
text deltas and call ``finish()`` at the end. Names are the ``--dyn-tool-call-parser`` values.
"""

from __future__ import annotations

from collections.abc import Callable

from dynamo.llm.postprocessor.parsers.tool_calls import json_formats as jf
from dynamo.llm.postprocessor.parsers.tool_calls import text_formats as tf
from dynamo.llm.postprocessor.parsers.tool_calls.base import ParseDelta, ToolCall, ToolCallParser
from dynamo.runtime import errors

__all__ = [
    "TOOL_CALL_PARSERS",
    "ParseDelta",
    "ToolCall",
    "ToolCallParser",
    "make_tool_call_parser",
    "parse_tool_calls",
]


def _factory(start: tuple[str, ...], end: tuple[str, ...], parse: Callable[[str], list[ToolCall] | None],
             at_start: tuple[str, ...] = ()) -> Callable[[set[str] | None], ToolCallParser]:
    return lambda names: ToolCallParser(start, end, parse, at_start=at_start, tool_names=names)


TOOL_CALL_PARSERS: dict[str, Callable[[set[str] | None], ToolCallParser]] = {
    "hermes": _factory(jf.HERMES_START, jf.HERMES_END, jf.parse_hermes),
    "llama3_json": _factory((jf.PYTHON_TAG,), (), jf.parse_llama3_json, at_start=("{",)),
    "mistral": _factory(jf.MISTRAL_START, (), jf.parse_mistral),
    "pythonic": _factory(("<|python_start|>",), ("<|python_end|>",), tf.parse_pythonic, at_start=("[",)),
    "deepseek_v3": _factory(jf.DEEPSEEK_START, jf.DEEPSEEK_END, jf.parse_deepseek_v3),
    "qwen3_coder": _factory(tf.QWEN3_CODER_START, tf.QWEN3_CODER_END, tf.parse_qwen3_coder),
    "harmony": _factory(tf.HARMONY_START, tf.HARMONY_END, tf.parse_harmony),
}


def make_tool_call_parser(name: str, tool_names: set[str] | None = None) -> ToolCallParser:
    """A new parser for format ``name``. With ``tool_names``, a call to any other function stays content."""
    try:
        factory = TOOL_CALL_PARSERS[name]
    except KeyError:
        raise errors.InvalidArgument(
            f"unknown tool call parser {name!r}; known: {', '.join(sorted(TOOL_CALL_PARSERS))}") from None
    return factory(tool_names)


def parse_tool_calls(name: str, text: str, tool_names: set[str] | None = None) -> ParseDelta:
    """Parse a whole output at once: (content, calls)."""
    p = make_tool_call_parser(name, tool_names)
    first = p.feed(text)
    last = p.finish()
    return ParseDelta(first.content + last.content, first.calls + last.calls)
