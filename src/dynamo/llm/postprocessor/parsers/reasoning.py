"""Streaming reasoning parsers: split generated text into ``reasoning_content`` and ``content``.

A parser is fed the detokenized text deltas of one choice and answers each with a
``(reasoning_delta, content_delta)`` pair; ``finish()`` flushes what it held back. It sits on the
per-token path, so every ``feed`` scans only the new text plus a held-back tail shorter than the
longest marker: a marker split across deltas anywhere parses the same as one that arrives whole.

Parsers by name (the worker card's ``runtime_config.reasoning_parser``):

- ``deepseek_r1``: the prompt ends inside a think block, so the output is reasoning up to
  ``</think>`` and content after it (an opening ``<think>`` the model repeats is dropped).
- ``qwen3``: an optional ``<think>…</think>`` block at the start is reasoning; output that does not
  open with ``<think>`` is all content.
- ``gpt_oss``: harmony channels. ``analysis`` messages are reasoning, ``final`` messages content.
  A ``commentary`` message addressed to a tool (``to=functions.x``) passes through verbatim as
  content, markup included, so a harmony tool-call parser downstream still sees the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dynamo.llm.postprocessor.parsers.markers import held_prefix
from dynamo.runtime.errors import ConfigError

Split = tuple[str, str]
EMPTY: Split = ("", "")


class ReasoningParser(Protocol):
    def feed(self, text: str) -> Split:
        """Consume one text delta; return ``(reasoning_delta, content_delta)`` ready to send."""
        ...

    def finish(self) -> Split:
        """End of output (stop, length or error): flush what was held back."""
        ...


_PREFIX, _REASONING, _CONTENT = 0, 1, 2


class ThinkTagParser:
    """``<think>…</think>`` at the start of the output. ``implicit_open``: the prompt already opened
    the block (DeepSeek-R1), so text before ``</think>`` is reasoning even without ``<think>``."""

    __slots__ = ("_buf", "_end", "_implicit", "_start", "_state")

    def __init__(self, *, implicit_open: bool, start: str = "<think>", end: str = "</think>") -> None:
        self._start = start
        self._end = end
        self._implicit = implicit_open
        self._state = _PREFIX
        self._buf = ""

    def feed(self, text: str) -> Split:
        if self._state == _CONTENT:
            return ("", text)
        buf = self._buf + text
        if self._state == _PREFIX:
            # Leading whitespace may precede the opening tag; wait until the tag is decided.
            head = buf.lstrip()
            if len(head) < len(self._start) and self._start.startswith(head):
                self._buf = buf
                return EMPTY
            if head.startswith(self._start):
                buf = head[len(self._start):]
            elif not self._implicit:
                self._state = _CONTENT
                self._buf = ""
                return ("", buf)
            self._state = _REASONING
        return self._reasoning(buf)

    def _reasoning(self, buf: str) -> Split:
        idx = buf.find(self._end)
        if idx >= 0:
            self._state = _CONTENT
            self._buf = ""
            return (buf[:idx], buf[idx + len(self._end):])
        hold = held_prefix(buf, (self._end,))
        self._buf = buf[len(buf) - hold:] if hold else ""
        return (buf[:len(buf) - hold], "")

    def finish(self) -> Split:
        buf, self._buf = self._buf, ""
        if not buf:
            return EMPTY
        if self._state == _REASONING or (self._state == _PREFIX and self._implicit):
            # A think block cut short (max_tokens): what was inside stays reasoning.
            return (buf, "")
        return ("", buf)


# Harmony (gpt-oss) special tokens, as the detokenizer renders them.
_H_START, _H_CHANNEL, _H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
_H_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_H_HEADER_STARTS = (_H_START, _H_CHANNEL)
#: a header longer than this without ``<|message|>`` is not a header: give it out as content
_H_MAX_HEADER = 512
_HEADER, _BODY = 0, 1


class HarmonyParser:
    """gpt-oss harmony output: ``<|channel|>NAME<|message|>BODY<|end|>`` messages, each later one
    after ``<|start|>assistant``. Text outside any header is content."""

    __slots__ = ("_buf", "_channel", "_raw", "_state")

    def __init__(self) -> None:
        self._state = _HEADER
        self._buf = ""
        self._channel = "final"
        self._raw = False  # passing a tool-addressed message through verbatim

    def _out(self, body: str) -> Split:
        if self._channel == "analysis" and not self._raw:
            return (body, "")
        return ("", body)

    def feed(self, text: str) -> Split:
        buf = self._buf + text
        self._buf = ""
        reasoning: list[str] = []
        content: list[str] = []
        while buf:
            if self._state == _HEADER:
                if not buf.startswith(_H_HEADER_STARTS):
                    if any(s.startswith(buf) for s in _H_HEADER_STARTS):
                        self._buf = buf  # a header token still arriving
                        break
                    # Plain text where a header was expected: the model answered without channels.
                    self._state, self._channel, self._raw = _BODY, "final", False
                    continue
                idx = buf.find(_H_MESSAGE)
                if idx < 0:
                    if len(buf) > _H_MAX_HEADER:
                        self._state, self._channel, self._raw = _BODY, "final", False
                        continue
                    self._buf = buf
                    break
                header = buf[:idx + len(_H_MESSAGE)]
                buf = buf[idx + len(_H_MESSAGE):]
                self._channel, self._raw = _header_channel(header)
                self._state = _BODY
                if self._raw:
                    content.append(header)
                continue
            # _BODY: look for the earliest end token in the new text (plus the held tail).
            if "<" not in buf:  # fast path: plain text, no marker can start here
                r, c = self._out(buf)
                reasoning.append(r)
                content.append(c)
                break
            end_at, end_tok = -1, ""
            for tok in _H_ENDS:
                i = buf.find(tok)
                if i >= 0 and (end_at < 0 or i < end_at):
                    end_at, end_tok = i, tok
            if end_at < 0:
                hold = held_prefix(buf, _H_ENDS)
                body = buf[:len(buf) - hold]
                self._buf = buf[len(buf) - hold:] if hold else ""
                r, c = self._out(body)
                reasoning.append(r)
                content.append(c)
                break
            r, c = self._out(buf[:end_at] + (end_tok if self._raw else ""))
            reasoning.append(r)
            content.append(c)
            buf = buf[end_at + len(end_tok):]
            self._state, self._raw = _HEADER, False
        return ("".join(reasoning), "".join(content))

    def finish(self) -> Split:
        buf, self._buf = self._buf, ""
        if not buf:
            return EMPTY
        if self._state == _HEADER:
            # An unfinished header is markup, not text for the client.
            return EMPTY if buf.startswith(("<|", "<")) else ("", buf)
        return self._out(buf)


def _header_channel(header: str) -> tuple[str, bool]:
    """``(channel, raw)`` from a header such as
    ``<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>``."""
    channel = "final"
    i = header.find(_H_CHANNEL)
    if i >= 0:
        words = header[i + len(_H_CHANNEL):].split("<|", 1)[0].split()
        if words:
            channel = words[0]
    return channel, " to=" in header


REASONING_PARSERS: dict[str, Callable[[], ReasoningParser]] = {
    "deepseek_r1": lambda: ThinkTagParser(implicit_open=True),
    "qwen3": lambda: ThinkTagParser(implicit_open=False),
    "gpt_oss": HarmonyParser,
}

#: parsers whose chat template honours ``enable_thinking``: with it off the template closes an empty
#: think block in the prompt, so the whole output is content
_THINKING_SWITCH = frozenset({"qwen3"})


def check_reasoning_parser(name: str | None) -> None:
    """Raise ``ConfigError`` for an unknown parser name (worker flag validation)."""
    if name and name not in REASONING_PARSERS:
        raise ConfigError(f"unknown reasoning parser {name!r}; known: {', '.join(sorted(REASONING_PARSERS))}")


def reasoning_parser_for(name: str | None, template_kwargs: Mapping[str, Any] | None = None,
                         ) -> ReasoningParser | None:
    """A fresh parser for one choice, or ``None`` when the output is not to be split (no parser
    configured, or the request switched thinking off in the chat template)."""
    if not name:
        return None
    factory = REASONING_PARSERS.get(name)
    if factory is None:
        raise ConfigError(f"unknown reasoning parser {name!r}")
    if name in _THINKING_SWITCH and template_kwargs and template_kwargs.get("enable_thinking") is False:
        return None
    return factory()


def split_all(parser: ReasoningParser, text: str) -> Split:
    """Non-streaming: the whole output at once."""
    r1, c1 = parser.feed(text)
    r2, c2 = parser.finish()
    return r1 + r2, c1 + c2
