"""Chat responses with tool calls split out: glue between the tool-call parsers and the OpenAI shapes.

Runs after the reasoning split (``frontend.reasoning``) on the content it leaves, so text inside a
think block is never taken for a call. With no parser (no tools in the request, ``tool_choice: none``,
or neither a parser on the worker card nor a constraint on the engine) content goes out unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from dynamo.llm.postprocessor.parsers.tool_calls import (
    TOOL_CALL_PARSERS,
    ParseDelta,
    ToolCall,
    ToolCallParser,
    make_tool_call_parser,
)
from dynamo.llm.postprocessor.parsers.tool_calls.base import arguments_text, call_from_object
from dynamo.llm.preprocessor.tool_choice import tool_choice_guided
from dynamo.llm.protocols import openai as oai
from dynamo.runtime.errors import ConfigError

#: finish reasons that mean "the model ended its turn": with calls made, they become tool_calls
_NATURAL_END = ("stop", "eos")


def check_tool_call_parser(name: str | None) -> None:
    if name and name not in TOOL_CALL_PARSERS:
        raise ConfigError(f"unknown tool call parser {name!r} (known: {', '.join(sorted(TOOL_CALL_PARSERS))})")


class ConstrainedToolCalls:
    """Reads the bare JSON that a ``tool_choice`` constraint (``preprocessor.tool_choice``) has the engine
    write: the arguments of the named function, or a ``[{"name", "parameters"}]`` array for ``required``.
    The output is held to the end (it is the call, not content). Output that is not that JSON (an engine
    without guided decoding) goes to the card's parser, if any, else it is content."""

    def __init__(self, named: str | None, tool_names: set[str], fallback: ToolCallParser | None) -> None:
        self.named = named
        self.tool_names = tool_names
        self.fallback = fallback
        self._buf: list[str] = []

    def feed(self, text: str) -> ParseDelta:
        self._buf.append(text)
        return ParseDelta()

    def finish(self) -> ParseDelta:
        text = "".join(self._buf)
        self._buf = []
        calls = self._read(text)
        if calls:
            return ParseDelta("", calls)
        if self.fallback is None:
            return ParseDelta(text, [])
        first = self.fallback.feed(text)
        last = self.fallback.finish()
        return ParseDelta(first.content + last.content, first.calls + last.calls)

    def _read(self, text: str) -> list[ToolCall] | None:
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if self.named is not None:
            args = arguments_text(value)
            return None if args is None else [ToolCall(self.named, args)]
        if not isinstance(value, list) or not value:
            return None
        calls = [call_from_object(v, ("parameters", "arguments")) for v in value]
        if any(c is None or c.name not in self.tool_names for c in calls):
            return None
        return [c for c in calls if c is not None]


class ChoiceToolCalls:
    """One chat choice's parser and how many calls it has sent (the next call's ``index``)."""

    def __init__(self, parser: ToolCallParser | ConstrainedToolCalls) -> None:
        self.parser = parser
        self.sent = 0

    def step(self, text: str, final: bool) -> ParseDelta:
        delta = self.parser.feed(text) if text else ParseDelta()
        if final:
            end = self.parser.finish()
            delta = ParseDelta(delta.content + end.content, delta.calls + end.calls)
        return delta


def tool_calls_for(parser_name: str | None, req: oai.ChatCompletionRequest) -> ChoiceToolCalls | None:
    """Tool-call state for one choice of ``req``, or None when its content is left as it is."""
    if not req.tools or req.tool_choice == "none":
        return None
    tc = req.tool_choice
    named = tc.function.name if isinstance(tc, oai.NamedToolChoice) else None
    names = {named} if named is not None else {t.function.name for t in req.tools}
    # A call to a function the request did not offer (or not the named one) stays content.
    parser = make_tool_call_parser(parser_name, names) if parser_name else None
    if tool_choice_guided(req) is not None:
        return ChoiceToolCalls(ConstrainedToolCalls(named, names, parser))
    return None if parser is None else ChoiceToolCalls(parser)


def _finish(state: ChoiceToolCalls, finish_reason: str | None) -> str | None:
    return "tool_calls" if state.sent and finish_reason in _NATURAL_END else finish_reason


def stream_delta(state: ChoiceToolCalls | None, delta: dict[str, Any] | None, finish_reason: str | None,
                 ) -> tuple[dict[str, Any] | None, str | None]:
    """One streamed chunk's ``delta`` (as the reasoning split built it) with its content run through the
    parser, and the chunk's finish reason. A call goes out whole in one delta: index, id, type, name and
    the complete arguments. ``None``: nothing to send yet."""
    if state is None or delta is None:
        return delta, finish_reason
    final = finish_reason is not None
    text = delta.get("content")
    if not text and not final:
        # nothing for the parser (a role or reasoning delta): it goes out as it is (deltas hold only
        # role/content/reasoning_content/tool_calls, so an empty one is nothing to send)
        return (delta, None) if delta else (None, None)
    parsed = state.step(text or "", final)
    if parsed.content:
        delta["content"] = parsed.content
    elif delta.get("content"):
        del delta["content"]  # all of it held back or taken by a call
    if parsed.calls:
        delta["tool_calls"] = [{"index": state.sent + k, **c.to_openai()} for k, c in enumerate(parsed.calls)]
        state.sent += len(parsed.calls)
        if delta.get("content") == "":
            del delta["content"]
    if not final and not delta:
        return None, None
    return delta, _finish(state, finish_reason)


def message_parts(state: ChoiceToolCalls | None, content: str | None, finish_reason: str | None,
                  ) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """A non-streamed message's ``(content, tool_calls, finish_reason)``; content is null when the turn
    is only tool calls, as OpenAI sends it."""
    if state is None:
        return content, None, finish_reason
    parsed = state.step(content or "", final=True)
    if not parsed.calls:
        return content, None, finish_reason
    state.sent += len(parsed.calls)
    return parsed.content or None, [c.to_openai() for c in parsed.calls], _finish(state, finish_reason)
