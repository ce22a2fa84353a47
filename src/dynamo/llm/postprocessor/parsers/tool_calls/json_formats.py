"""Formats whose calls are JSON objects: hermes, llama3_json, mistral, deepseek_v3."""

from __future__ import annotations

import json
import re

from dynamo.llm.postprocessor.parsers.tool_calls.base import ToolCall, arguments_text, call_from_object

_DECODER = json.JSONDecoder()


def _strip_markers(block: str, start: tuple[str, ...], end: tuple[str, ...]) -> str:
    for m in start:
        if block.startswith(m):
            block = block[len(m):]
            break
    for m in end:
        if block.endswith(m):
            block = block[: -len(m)]
            break
    return block


HERMES_START = ("<tool_call>",)
HERMES_END = ("</tool_call>",)


def parse_hermes(block: str) -> list[ToolCall] | None:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen 2.5/3, Hermes)."""
    if not block.endswith(HERMES_END):
        return None  # cut off before the closing tag
    call = call_from_object(json.loads(_strip_markers(block, HERMES_START, HERMES_END)))
    return None if call is None else [call]


PYTHON_TAG = "<|python_tag|>"


def _json_objects(text: str) -> list[object] | None:
    """Consecutive JSON values separated by blanks or ``;`` (Llama may emit several calls that way)."""
    values: list[object] = []
    i = 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ";"):
            i += 1
        if i >= len(text):
            return values
        value, i = _DECODER.raw_decode(text, i)
        values.append(value)


def parse_llama3_json(block: str) -> list[ToolCall] | None:
    """``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>`` (Llama 3.1/3.2)."""
    body = _strip_markers(block, (PYTHON_TAG,), ())
    values = _json_objects(body)
    if not values:
        return None
    calls = [call_from_object(v) for v in values]
    if any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


MISTRAL_START = ("[TOOL_CALLS]",)


def parse_mistral(block: str) -> list[ToolCall] | None:
    """``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (Mistral v3 tokenizer) or the newer
    ``[TOOL_CALLS]name[ARGS]{...}`` form."""
    body = _strip_markers(block, MISTRAL_START, ()).strip()
    if body.startswith("[") or body.startswith("{"):
        value, end = _DECODER.raw_decode(body)
        if body[end:].strip():
            return None
        items = value if isinstance(value, list) else [value]
        calls = [call_from_object(v) for v in items]
        if not calls or any(c is None for c in calls):
            return None
        return [c for c in calls if c is not None]
    calls_new: list[ToolCall] = []
    for part in body.split("[TOOL_CALLS]"):
        name, sep, args = part.partition("[ARGS]")
        if not sep or not name.strip():
            return None
        text = arguments_text(args.strip())
        if text is None:
            return None
        calls_new.append(ToolCall(name.strip(), text))
    return calls_new


DEEPSEEK_START = ("<｜tool▁calls▁begin｜>",)
DEEPSEEK_END = ("<｜tool▁calls▁end｜>",)
# V3: function<｜tool▁sep｜>name\n```json\n{...}\n```   V3.1: name<｜tool▁sep｜>{...}
_DEEPSEEK_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.S)
_DEEPSEEK_V3_BODY = re.compile(r"\A([^\n]+)\n```(?:json)?\n(.*)\n```\s*\Z", re.S)


def parse_deepseek_v3(block: str) -> list[ToolCall] | None:
    if not block.endswith(DEEPSEEK_END):
        return None
    body = _strip_markers(block, DEEPSEEK_START, DEEPSEEK_END)
    calls: list[ToolCall] = []
    pos = 0
    for m in _DEEPSEEK_CALL.finditer(body):
        if body[pos:m.start()].strip():
            return None
        pos = m.end()
        kind, rest = m.group(1).strip(), m.group(2)
        v3 = _DEEPSEEK_V3_BODY.match(rest)
        if kind == "function" and v3 is not None:
            name, args = v3.group(1).strip(), v3.group(2)
        else:
            name, args = kind, rest
        text = arguments_text(args.strip())
        if not name or text is None:
            return None
        calls.append(ToolCall(name, text))
    if body[pos:].strip():
        return None
    return calls or None
