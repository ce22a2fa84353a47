"""Formats whose calls are not a JSON object: pythonic, qwen3_coder, harmony."""

from __future__ import annotations

import ast
import json
import re

from dynamo.llm.postprocessor.parsers.tool_calls.base import ToolCall, arguments_text

#: a model should not nest deeper than this; guards the AST walk on adversarial text
_MAX_PYTHONIC_CHARS = 1_000_000


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def parse_pythonic(block: str) -> list[ToolCall] | None:
    """``[get_weather(city="Paris"), f(a=1)]`` (Llama 3.2/4 pythonic). The text is parsed as a Python
    expression and only literal keyword arguments are accepted: nothing is ever evaluated."""
    text = block.strip()
    for tag in ("<|python_start|>",):
        text = text.removeprefix(tag)
    text = text.removesuffix("<|python_end|>").strip()
    if len(text) > _MAX_PYTHONIC_CHARS:
        return None
    tree = ast.parse(text, mode="eval")
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls: list[ToolCall] = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        if name is None:
            return None
        args: dict[str, object] = {}
        for kw in node.keywords:
            if kw.arg is None:
                return None  # **kwargs
            args[kw.arg] = ast.literal_eval(kw.value)
        text_args = arguments_text(args)
        if text_args is None:
            return None
        calls.append(ToolCall(name, text_args))
    return calls


QWEN3_CODER_START = ("<tool_call>",)
QWEN3_CODER_END = ("</tool_call>",)
_FUNCTION = re.compile(r"\A\s*<function=([^>\n]+)>(.*)</function>\s*\Z", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


def _parameter_value(raw: str) -> object:
    # The template writes one newline on each side of a value; strings are written bare, anything
    # else as JSON.
    value = raw.removeprefix("\n").removesuffix("\n")
    try:
        return json.loads(value)
    except ValueError:
        return value


def parse_qwen3_coder(block: str) -> list[ToolCall] | None:
    """``<tool_call><function=name><parameter=x>value</parameter></function></tool_call>`` (Qwen3-Coder)."""
    if not block.endswith(QWEN3_CODER_END):
        return None
    body = block[len(QWEN3_CODER_START[0]): -len(QWEN3_CODER_END[0])]
    m = _FUNCTION.match(body)
    if m is None:
        return None
    name, params = m.group(1).strip(), m.group(2)
    args: dict[str, object] = {}
    pos = 0
    for p in _PARAMETER.finditer(params):
        if params[pos:p.start()].strip():
            return None
        pos = p.end()
        args[p.group(1).strip()] = _parameter_value(p.group(2))
    if params[pos:].strip() or not name:
        return None
    text = arguments_text(args)
    return None if text is None else [ToolCall(name, text)]


# gpt-oss: <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>
# (the recipient may also come before the channel: "assistant to=functions.NAME<|channel|>commentary ...")
HARMONY_START = ("<|start|>assistant<|channel|>commentary", "<|channel|>commentary",
                 "<|start|>assistant to=functions.")
# A commentary message that is no call (a preamble) ends with <|end|> and stays content.
HARMONY_END = ("<|call|>", "<|end|>")
_HARMONY_CALL = re.compile(
    r"\A(?:<\|start\|>assistant\s+to=functions\.(?P<n1>[\w.\-]+)\s*<\|channel\|>commentary"
    r"|(?:<\|start\|>assistant)?<\|channel\|>commentary\s+to=functions\.(?P<n2>[\w.\-]+))"
    r"[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>(?P<args>.*)<\|call\|>\Z", re.S)


def parse_harmony(block: str) -> list[ToolCall] | None:
    m = _HARMONY_CALL.match(block)
    if m is None:
        return None
    name = m.group("n1") or m.group("n2")
    text = arguments_text(m.group("args").strip())
    return None if text is None or not name else [ToolCall(name, text)]
