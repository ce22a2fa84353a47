"""``tool_choice: required`` / a named function as a guided-decoding constraint for the engine.

With the constraint the engine writes the call itself as bare JSON (the arguments for a named choice;
an array of ``{"name", "parameters"}`` for ``required``), whatever the model's own tool-call syntax. The
frontend reads that JSON back into ``tool_calls`` (``frontend.tool_call_output``); an engine that ignores
guided decoding writes in the model's syntax, which the card's parser still reads.

The constraint is only set when it is simple: the request asks for no other structured output, and for
``required`` no tool schema uses ``$ref`` (embedding such a schema in the array schema would move the
root its references resolve against). Otherwise the output is just parsed.
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.protocols.openai import ChatCompletionRequest, NamedToolChoice

_OBJECT: dict[str, Any] = {"type": "object"}


def _asks_structured_output(req: ChatCompletionRequest) -> bool:
    sources = [req] if req.nvext is None else [req, req.nvext]
    if any(getattr(s, f"guided_{k}", None) is not None for s in sources for k in ("json", "regex", "choice",
                                                                                    "grammar")):
        return True
    return req.response_format is not None and req.response_format.type != "text"


def _uses_refs(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or "$defs" in schema or "definitions" in schema or any(
            _uses_refs(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_uses_refs(v) for v in schema)
    return False


def tool_choice_guided(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The guided-decoding spec for the request's tool choice, or None when the engine is left free."""
    tc = req.tool_choice
    if not req.tools or tc is None or tc in ("none", "auto") or _asks_structured_output(req):
        return None
    if isinstance(tc, NamedToolChoice):
        fn = next(t.function for t in req.tools if t.function.name == tc.function.name)
        return {"json": fn.parameters or _OBJECT}
    params = [t.function.parameters or _OBJECT for t in req.tools]
    if any(_uses_refs(p) for p in params):
        return None
    one_call = [{"type": "object", "properties": {"name": {"const": t.function.name}, "parameters": p},
                 "required": ["name", "parameters"]} for t, p in zip(req.tools, params, strict=True)]
    return {"json": {"type": "array", "minItems": 1, "items": {"anyOf": one_call}}}
