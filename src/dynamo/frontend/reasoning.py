"""Chat responses with the reasoning split: glue between the reasoning parsers and the OpenAI shapes.

The chat path calls these per choice; with no parser (none on the worker card, thinking switched off,
or the completions endpoint) the text goes out as plain ``content``, exactly as before.
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.postprocessor.parsers.reasoning import EMPTY, ReasoningParser, split_all
from dynamo.llm.protocols import openai as oai


def stream_delta(parser: ReasoningParser | None, text: str, *, role: str | None, final: bool,
                 ) -> dict[str, Any] | None:
    """The ``delta`` of one streamed chunk, or ``None`` when there is nothing to send yet (the parser
    is holding back what may be the start of a marker). ``final``: the choice's last step, which
    flushes the parser so a think block cut by max_tokens still reaches the client as reasoning."""
    if parser is None:
        if not text and not final and role is None:
            return None
        return oai.chat_delta(text or ("" if role else None), role=role)
    reasoning, content = parser.feed(text) if text else EMPTY
    if final:
        r, c = parser.finish()
        reasoning, content = reasoning + r, content + c
    if not reasoning and not content and not final and role is None:
        return None
    return oai.chat_delta(content or ("" if role else None), role=role, reasoning_content=reasoning or None)


def message_parts(parser: ReasoningParser | None, text: str) -> tuple[str | None, str | None]:
    """``(reasoning_content, content)`` of a non-streamed message."""
    if parser is None:
        return None, text
    reasoning, content = split_all(parser, text)
    if not reasoning:
        return None, content
    # Only reasoning (cut by max_tokens before the answer): no content, as OpenAI-style servers say it.
    return reasoning, content or None
