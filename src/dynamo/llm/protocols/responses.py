"""OpenAI Responses API (``POST /v1/responses``): the request model, its translation to a chat
completion request (the Responses API runs on the chat pipeline, reference §4.2), and builders for
the response object and its parts.

Stateless: nothing is stored, so ``previous_response_id`` (and ``store: true`` retrieval) is refused
with a clear 400 rather than silently answering without the earlier turns. Only function tools are
accepted; built-in tools (web search, file search, ...) need OpenAI's servers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dynamo.llm.protocols import openai as oai
from dynamo.runtime.errors import InvalidArgument

RESPONSE_OBJECT = "response"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponsesTool(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=oai.MAX_FUNCTION_NAME_LEN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(_Lenient):
    type: Literal["function"]
    name: str


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=oai.I64_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=oai.MAX_TOP_LOGPROBS)
    stream: bool = False
    tools: list[ResponsesTool] | None = Field(default=None, max_length=oai.MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    user: str | None = None
    # extensions, as on chat completions
    nvext: oai.NvExt | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        if self.previous_response_id is not None:
            raise oai.ParamError("previous_response_id", "previous_response_id is not supported: this server "
                                  "stores no responses; send the earlier turns in input")
        if isinstance(self.input, list) and not self.input:
            raise oai.ParamError("input", "input must not be an empty array")
        return self

    def to_chat(self) -> oai.ChatCompletionRequest:
        """The equivalent chat completion request (one choice). Bad input items raise
        ``InvalidArgument`` naming ``input[i]``; a failing chat-level check names the Responses field."""
        body: dict[str, Any] = {"model": self.model, "messages": _messages(self.instructions, self.input),
                                "stream": self.stream}
        for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls"),
                             ("user", "user")):
            value = getattr(self, ours)
            if value is not None:
                body[theirs] = value
        if self.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude_none=True, by_alias=True,
                                                                           exclude={"type"})} for t in self.tools]
        tc = self.tool_choice
        if tc is not None:
            body["tool_choice"] = tc if isinstance(tc, str) else {"type": "function", "function": {"name": tc.name}}
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type != "text":
            body["response_format"] = (
                {"type": "json_object"} if fmt.type == "json_object" else
                {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_,
                                                        "strict": fmt.strict}})
        if self.chat_template_kwargs is not None:
            body["chat_template_kwargs"] = self.chat_template_kwargs
        if self.nvext is not None:
            body["nvext"] = self.nvext.model_dump(exclude_none=True)
        try:
            return oai.ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            message, param = oai.validation_error_to_openai(exc)
            for chat_name, ours in _CHAT_PARAMS:
                if param is not None and param.startswith(chat_name):
                    message = message.replace(chat_name, ours)
            raise InvalidArgument(message) from None


#: chat request parameter prefixes -> the Responses names clients sent
_CHAT_PARAMS = (
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format.json_schema", "text.format"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
    ("top_logprobs", "top_logprobs"),
)


def _text_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content: a string, or its parts as chat content parts (input_text/output_text -> text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidArgument(f"Validation: {where}.content: must be a string or an array of content parts")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidArgument(f"Validation: {where}.content[{j}]: must be an object with a type")
        kind = part["type"]
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise InvalidArgument(f"Validation: {where}.content[{j}].text: must be a string")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            # images, files, audio: passed on for templates of models that take them
            parts.append(dict(part))
    return parts


def _messages(instructions: str | None, items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items -> chat messages. Function calls become an assistant turn's
    ``tool_calls`` (consecutive calls share one turn); their outputs become ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidArgument(f"Validation: {where}.role: must be one of user, assistant, system, "
                                      f"developer (got {role!r})")
            messages.append({"role": role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(args, str) or not isinstance(call_id, str):
                raise InvalidArgument(f"Validation: {where}: a function_call needs string name, arguments "
                                      "and call_id")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise InvalidArgument(f"Validation: {where}.call_id: must be a string")
            text = output if isinstance(output, str) else _text_of(output, where) if output is not None else ""
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # earlier reasoning is not replayed to the model, as chat templates drop it too
        else:
            raise InvalidArgument(f"Validation: {where}.type: input items of type {kind!r} are not supported "
                                  "(message, function_call, function_call_output, reasoning)")
    return messages


# -- response objects ----------------------------------------------------------------------------------


def response_id(request_id: str) -> str:
    return f"resp_{request_id}"


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": chat_usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat_usage["total_tokens"]}


def response_object(req: ResponsesRequest, rid: str, created: int, *, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    incomplete_reason: str | None = None) -> dict[str, Any]:
    """The ``response`` object; ``status`` ``in_progress`` (stream start), ``completed`` or ``incomplete``."""
    tc = req.tool_choice
    fmt = req.text.format.model_dump(exclude_none=True, by_alias=True) if req.text and req.text.format else {
        "type": "text"}
    return {
        "id": response_id(rid), "object": RESPONSE_OBJECT, "created_at": created, "status": status,
        "model": req.model, "output": output, "error": None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {}, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None, "reasoning": req.reasoning, "store": False,
        "temperature": req.temperature, "top_p": req.top_p, "top_logprobs": req.top_logprobs,
        "text": {"format": fmt},
        "tool_choice": (tc if isinstance(tc, str) else tc.model_dump()) if tc is not None else "auto",
        "tools": [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools or ()],
        "truncation": "disabled", "user": req.user, "usage": usage,
    }


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [output_text_part(text, logprobs)]}


def output_text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def function_call_item(item_id: str, call: dict[str, Any], status: str, *, arguments: str | None = None,
                       ) -> dict[str, Any]:
    """From a chat ``tool_calls`` entry (``{"id", "function": {"name", "arguments"}}``)."""
    fn = call["function"]
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"] if arguments is None else arguments, "status": status}
