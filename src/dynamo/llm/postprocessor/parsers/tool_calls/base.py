"""Streaming machinery shared by the tool-call parsers.

A parser sees the model's text one delta at a time. Text outside a call is released as content as soon
as it cannot be the beginning of a call marker; text inside a call is held until the call's end marker
(or the end of the output, for formats without one) and then parsed. A block that fails to parse is
released as content: a malformed call is the model's text, never an error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo.llm.postprocessor.parsers.markers import held_prefix


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON text, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParseDelta:
    """What one ``feed``/``finish`` step produced: content to emit now and calls completed now."""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


def arguments_text(args: Any) -> str | None:
    """The JSON text of a call's arguments, or None if they are not an object (then it is no call)."""
    if isinstance(args, str):
        # Some models put the arguments in as a JSON string.
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return json.dumps(args, ensure_ascii=False, separators=(",", ":"))


def call_from_object(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """``{"name": ..., "arguments"|"parameters": {...}}`` as a call, or None if it is not that shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args: Any = None
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    text = arguments_text(args)
    return None if text is None else ToolCall(obj["name"], text)


#: parses one block (start marker through end marker) into calls; None means "not a call: content"
BlockParser = Callable[[str], "list[ToolCall] | None"]


class ToolCallParser:
    """Streaming tool-call parser for one format.

    ``start``: the markers that open a call block; ``end``: the markers that close it (empty: the block
    runs to the end of the output). ``at_start``: markers that open a block only as the first
    non-blank text of the output (a bare JSON object or Python list). ``parse_block`` gets the block's
    text from its start marker through its end marker.
    """

    def __init__(self, start: tuple[str, ...], end: tuple[str, ...], parse_block: BlockParser,
                 at_start: tuple[str, ...] = (), tool_names: set[str] | None = None) -> None:
        self.start = start
        self.end = end
        self.at_start = at_start
        self._parse_block = parse_block
        self.tool_names = tool_names
        self._max_end = max((len(m) for m in end), default=0)
        self._pending = ""  # content-state text not yet released (at most a marker prefix)
        self._seen_text = False  # any non-blank text released or held yet
        self.calls: list[ToolCall] = []
        # The open call block is kept as parts and searched for its end marker only in the new text plus
        # the few characters before it, so a long call costs linear time however finely it is streamed.
        self._in_call = False
        self._parts: list[str] = []
        self._total = 0
        self._skip = 0  # length of the block's start marker: no end marker is searched inside it
        self._tail = ""
        self._tail_start = 0

    # -- public interface -----------------------------------------------------------------------------

    def feed(self, text: str) -> ParseDelta:
        return self._step(text, final=False)

    def finish(self) -> ParseDelta:
        return self._step("", final=True)

    # -- internals ------------------------------------------------------------------------------------

    def _step(self, text: str, final: bool) -> ParseDelta:
        out = ParseDelta()
        content: list[str] = []
        while True:
            if self._in_call:
                rest = self._call_push(text, final, content, out)
                if rest is None:
                    break
                text = rest
                continue
            self._pending += text
            text = ""
            initial = self._content_step(content, final)
            if initial is None:
                break
            text = initial
        out.content = "".join(content)
        return out

    def _content_step(self, content: list[str], final: bool) -> str | None:
        """Release what content can be released; on a start marker, open a call block and return its text
        so far (None: still in content)."""
        buf = self._pending
        if not buf:
            return None
        if not self._seen_text and self.at_start:
            stripped = buf.lstrip()
            if not stripped:
                if final:
                    content.append(buf)
                    self._pending = ""
                return None
            if any(stripped.startswith(m) for m in self.at_start):
                self._seen_text = True
                return self._open(buf, 0)
            if not final and any(m.startswith(stripped) for m in self.at_start):
                return None  # could still become a marker
        self._seen_text = True
        pos, marker = self._find(buf, self.start)
        if marker is None:
            keep = 0 if final else held_prefix(buf, self.start)
            content.append(buf[: len(buf) - keep])
            self._pending = buf[len(buf) - keep:]
            return None
        content.append(buf[:pos])
        return self._open(buf[pos:], len(marker))

    def _open(self, initial: str, skip: int) -> str:
        self._pending = ""
        self._in_call = True
        self._parts, self._total, self._skip = [], 0, skip
        self._tail, self._tail_start = "", 0
        return initial

    def _call_push(self, text: str, final: bool, content: list[str], out: ParseDelta) -> str | None:
        """Add ``text`` to the open block; when the block closes, parse it and return the text after it
        (None: the block is still open)."""
        if text:
            self._parts.append(text)
            self._total += len(text)
        if self.end:
            window, base = self._tail + text, self._tail_start
            pos, marker = self._find(window, self.end, max(0, self._skip - base))
            if marker is not None:
                end = base + pos + len(marker)
                whole = "".join(self._parts)
                self._close(whole[:end], content, out)
                return whole[end:]
            start = min(max(self._skip, self._total - self._max_end + 1), self._total)
            self._tail, self._tail_start = window[start - base:], start
        if final:
            self._close("".join(self._parts), content, out)
            return ""
        return None

    def _close(self, block: str, content: list[str], out: ParseDelta) -> None:
        self._in_call = False
        self._parts, self._total, self._tail = [], 0, ""
        calls = self._accept(block)
        if calls is None:
            content.append(block)
        else:
            out.calls.extend(calls)
            self.calls.extend(calls)

    def _accept(self, block: str) -> list[ToolCall] | None:
        try:
            calls = self._parse_block(block)
        except (ValueError, TypeError, KeyError, SyntaxError, RecursionError, MemoryError):
            calls = None
        if not calls:
            return None
        if self.tool_names is not None and any(c.name not in self.tool_names for c in calls):
            # A call to a function the request did not offer only looks like a call.
            return None
        return calls

    @staticmethod
    def _find(text: str, markers: tuple[str, ...], offset: int = 0) -> tuple[int, str | None]:
        best, found = -1, None
        for m in markers:
            i = text.find(m, offset)
            if i >= 0 and (best < 0 or i < best):
                best, found = i, m
        return best, found
