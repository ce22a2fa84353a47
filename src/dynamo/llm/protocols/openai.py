"""OpenAI-compatible API: request models (pydantic, validated once per request) and response
builders (plain dicts, built per chunk on the hot path and encoded with orjson).

Validation follows reference §4.3 (``protocols/openai/validate.rs``): ranges are checked here and a
failure becomes an HTTP 400 whose message starts with ``"Validation: "`` and names the parameter.
Unknown top-level fields are ignored, as the OpenAI API does.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------------------------------
# Limits (reference §4.3)
# --------------------------------------------------------------------------------------------------

MAX_N = 128
MAX_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20
MAX_BEST_OF = 20
MAX_STOP_SEQUENCES = 32
#: longest stop string accepted: the frontend holds back up to this many characters per choice while a
#: stop string may be forming, so an unbounded one is memory and CPU a client controls
MAX_STOP_SEQUENCE_CHARS = 1024
MAX_TOOLS = 1536
MAX_FUNCTION_NAME_LEN = 96
LOGIT_BIAS_RANGE = 100.0
#: integers travel to workers as msgpack, which has 64 bits: a bigger one is a 400, not an encoder crash
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
U64_MAX = 2**64 - 1

Int64 = Annotated[int, Field(ge=I64_MIN, le=I64_MAX)]
NonNegInt64 = Annotated[int, Field(ge=0, le=I64_MAX)]
#: worker instance ids are u64
InstanceId = Annotated[int, Field(ge=0, le=U64_MAX)]

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


class _Lenient(BaseModel):
    """Nested objects keep unknown keys: templates may read vendor-specific message fields."""

    model_config = ConfigDict(extra="allow")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None

    @field_validator("arguments")
    @classmethod
    def _arguments_fit(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, dict):
            _check_json_ints(v)
        return v


class ToolCall(_Lenient):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # Only assistant turns may omit content (a pure tool-call turn).
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content is required for a '{self.role}' message")
        return self


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1, max_length=MAX_FUNCTION_NAME_LEN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoiceFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedToolChoiceFunction


class JsonSchemaFormat(_Lenient):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.schema_ is None:
                raise _ParamError("response_format.json_schema",
                                  "response_format of type json_schema needs json_schema.schema")
            _check_json_schema("response_format.json_schema.schema", self.json_schema.schema_)
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class AgentHints(_Lenient):
    priority: Int64 | None = None
    osl: NonNegInt64 | None = None
    latency_sensitivity: float | None = None
    speculative_prefill: bool | None = None


class RouterTargets(_Lenient):
    """``nvext.router``: the request's SLA targets in ms; the global router picks a pool with them."""

    ttft_target: float | None = Field(default=None, ge=0)
    itl_target: float | None = Field(default=None, ge=0)


class NvExt(_Lenient):
    """Dynamo's request extension (``nvext``): routing hints and raw-prompt controls."""

    ignore_eos: bool | None = None
    use_raw_prompt: bool | None = None
    annotations: list[str] | None = None
    backend_instance_id: InstanceId | None = None
    prefill_worker_id: InstanceId | None = None
    decode_worker_id: InstanceId | None = None
    dp_rank: NonNegInt64 | None = None
    prefill_dp_rank: NonNegInt64 | None = None
    agent_hints: AgentHints | None = None
    router: RouterTargets | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: list[str] | None = None
    lora_name: str | None = None
    extra_fields: list[str] | None = None


class _CommonRequest(BaseModel):
    """Sampling and stop fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=I64_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: Int64 | None = None
    user: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    # vLLM-style extensions
    top_k: Int64 | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=0.0, le=2.0)
    length_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    use_beam_search: bool | None = None
    min_tokens: NonNegInt64 | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    stop_token_ids: list[NonNegInt64] | None = None
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    response_format: ResponseFormat | None = None
    nvext: NvExt | None = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v < 1:
            raise ValueError("must be -1 (disabled) or >= 1")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else v or ():
            if len(s) > MAX_STOP_SEQUENCE_CHARS:
                raise ValueError(f"stop sequences must be at most {MAX_STOP_SEQUENCE_CHARS} characters, "
                                 f"got one of {len(s)}")
        if isinstance(v, list):
            if len(v) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(v)}")
            if any(s == "" for s in v):
                raise ValueError("stop sequences must not be empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            for tok, bias in v.items():
                if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                    raise ValueError(f"bias for token {tok} must be in [-100, 100], got {bias}")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> _CommonRequest:
        _check_guided(self)
        if self.nvext is not None:
            _check_guided(self.nvext, "nvext.")
        if self.stream_options is not None and not self.stream:
            raise _ParamError("stream_options", "stream_options can only be set when stream is true")
        limit = self.effective_max_tokens
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise _ParamError("min_tokens", f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({limit})")
        if self.best_of is not None and self.n is not None and self.best_of < self.n:
            raise _ParamError("best_of", "best_of must be greater than or equal to n")
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        if isinstance(self.stop, str):
            return [self.stop] if self.stop else []
        return list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_CommonRequest):
    messages: list[ChatMessage]
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=I64_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template_args: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    reasoning_effort: str | None = None

    @field_validator("messages")
    @classmethod
    def _messages_non_empty(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("messages must not be empty")
        return v

    @model_validator(mode="after")
    def _chat_cross_field(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _ParamError("top_logprobs", "top_logprobs requires logprobs to be true")
        _check_tools(self.tools, self.tool_choice)
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        # max_completion_tokens is the newer name and wins when both are given.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def template_kwargs(self) -> dict[str, Any]:
        if self.chat_template_args and self.chat_template_kwargs:
            return {**self.chat_template_args, **self.chat_template_kwargs}
        return self.chat_template_kwargs or self.chat_template_args or {}

    @property
    def tool_choice_name(self) -> str | None:
        """``"none"|"auto"|"required"``, or ``"function"`` for a named choice."""
        tc = self.tool_choice
        if tc is None or isinstance(tc, str):
            return tc
        return "function"


GUIDED_KINDS = ("json", "regex", "choice", "grammar")


def _check_json_ints(value: Any) -> None:
    """Free-form JSON bound for a worker (msgpack) or a JSON encoder with 64-bit integers (orjson)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, int) and not I64_MIN <= v <= U64_MAX:
            raise ValueError(f"integers must fit in 64 bits, got {v}")


#: valid schemas remembered by :func:`_check_json_schema` (cleared when full: a simple bound)
MAX_REMEMBERED_SCHEMAS = 4096
_VALID_SCHEMAS: set[bytes] = set()


def _check_json_schema(param: str, schema: Any) -> None:
    """A JSON schema the engine can compile, or a 400 naming what is wrong with it."""
    if not isinstance(schema, (dict, bool)):
        raise _ParamError(param, f"{param} must be a JSON schema object, got {type(schema).__name__}")
    try:
        _check_json_ints(schema)
    except ValueError as exc:
        raise _ParamError(param, f"{param}: {exc}") from None
    # Agents send the same tools every turn, and checking a schema against its metaschema costs ~0.4 ms:
    # remember the schemas that passed (by their canonical JSON; the ints were bounded just above).
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if key in _VALID_SCHEMAS:
        return
    # Imported here: only requests with schemas pay for it.
    from jsonschema import SchemaError, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise _ParamError(param, f"{param} is not a valid JSON schema: {exc.message}"
                                 + (f" (at {where})" if where else "")) from None
    if len(_VALID_SCHEMAS) >= MAX_REMEMBERED_SCHEMAS:
        _VALID_SCHEMAS.clear()
    _VALID_SCHEMAS.add(key)


def _check_guided(src: Any, prefix: str = "") -> None:
    """The ``guided_*`` options (top level or ``nvext``): at most one kind, each well formed. A JSON
    schema given as a string is parsed in place, so the engine always receives an object."""
    given = [k for k in GUIDED_KINDS if getattr(src, f"guided_{k}", None) is not None]
    if len(given) > 1:
        raise _ParamError(f"{prefix}guided_{given[1]}",
                          f"only one of {', '.join(prefix + 'guided_' + k for k in given)} may be given")
    if not given:
        return
    kind = given[0]
    param = f"{prefix}guided_{kind}"
    value = getattr(src, param.rsplit(".", 1)[-1])
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise _ParamError(param, f"{param} is a string but not JSON: {exc}") from None
            src.guided_json = value
        _check_json_schema(param, value)
    elif kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise _ParamError(param, f"{param} is not a valid regular expression: {exc}") from None
    elif kind == "choice":
        if not value or any(not isinstance(c, str) or not c for c in value):
            raise _ParamError(param, f"{param} must be a non-empty list of non-empty strings")
    elif not value.strip():
        raise _ParamError(param, f"{param} must not be empty")


def _check_tools(tools: list[Tool] | None, tool_choice: str | NamedToolChoice | None) -> None:
    """Each tool's ``parameters`` must be a JSON schema, and a tool choice other than none/auto must name
    an offered tool (OpenAI answers both with a 400)."""
    for i, tool in enumerate(tools or []):
        params = tool.function.parameters
        if params is None:
            continue
        _check_json_schema(f"tools[{i}].function.parameters", params)
    if tool_choice is None or tool_choice in ("none", "auto"):
        return
    if not tools:
        raise _ParamError("tool_choice", "tool_choice other than 'none' or 'auto' requires tools")
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        if all(t.function.name != name for t in tools):
            raise _ParamError("tool_choice", f"tool_choice names function {name!r}, which is not in tools")


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_CommonRequest):
    # The before-validator checks the whole shape; pydantic's own union validation of a token array tried
    # each member in turn and cost ~8 ms for a 31k-token prompt (the schema still documents the union).
    prompt: Annotated[Prompt, SkipValidation]
    suffix: str | None = None
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_special_tokens: bool | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError("prompt must be a string, an array of strings, or an array of token ids")
        if not v:
            raise ValueError("prompt must not be an empty array")
        first = v[0]
        if isinstance(first, str):
            if not all(isinstance(p, str) for p in v):
                raise ValueError("an array prompt must not mix strings and other types")
        elif isinstance(first, list):
            for p in v:
                if not isinstance(p, list) or not p:
                    raise ValueError("each token-id prompt must be a non-empty array of integers")
                _check_token_ids(p)
        else:
            _check_token_ids(v)
        return v

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt normalised to a batch (fan-out unit of §4.2)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], (str, list)):
            return p  # type: ignore[return-value]
        return [p]  # type: ignore[list-item]


def _check_token_ids(ids: list[Any]) -> None:
    # Whole-array checks at C speed (a long prompt is tens of thousands of ids). ``type(t) is int`` also
    # rejects bool: a JSON true in a token array is a client bug. Above 64 bits no encoder downstream copes.
    if set(map(type, ids)) != {int} or min(ids) < 0 or max(ids) > I64_MAX:
        bad = next(t for t in ids if type(t) is not int or not 0 <= t <= I64_MAX)
        raise ValueError(f"token ids must be non-negative integers below 2**63, got {bad!r}")


class _ParamError(ValueError):
    """A model-level validation failure that knows which parameter it concerns."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


#: for sibling request models (the Responses API) that name their own parameters
ParamError = _ParamError


# --------------------------------------------------------------------------------------------------
# Validation errors -> (message, param)
# --------------------------------------------------------------------------------------------------

_VALIDATION_PREFIX = "Validation: "


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        # pydantic names union branches and function validators in loc; they are noise to a user
        if not isinstance(item, str) or item.startswith(("function-", "union[")) or item in (
            "str", "list[str]", "list[int]", "list[list[int]]", "list[ContentPart]", "NamedToolChoice",
            "literal['none','auto','required']", "json-or-python[json=list[int],python=chain[is-instance[Sequence],function-wrap[sequence_validator()]]]",
        ):
            continue
        parts.append(item if not parts else f".{item}")
    return "".join(parts) or None


def validation_error_to_openai(exc: ValidationError) -> tuple[str, str | None]:
    """The first error of a pydantic ``ValidationError`` as ``(message, param)`` for a 400 body.

    The message is prefixed with ``"Validation: "`` and names the parameter, e.g.
    ``"Validation: temperature: Input should be less than or equal to 2 (got 3.5)"``.
    """
    errors = exc.errors(include_url=False)
    if not errors:
        return _VALIDATION_PREFIX + "invalid request", None
    err = errors[0]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _ParamError):
        return f"{_VALIDATION_PREFIX}{ctx_err.param}: {ctx_err.message}", ctx_err.param
    param = _loc_to_param(tuple(err.get("loc", ())))
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    kind = err.get("type", "")
    if kind == "missing":
        msg = "missing required parameter"
    elif "input" in err and kind not in ("model_type", "list_type", "dict_type") and _is_scalar(err["input"]):
        msg = f"{msg} (got {err['input']!r})"
    text = f"{_VALIDATION_PREFIX}{param}: {msg}" if param else _VALIDATION_PREFIX + msg
    return text, param


def _is_scalar(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, str, bool)) and len(repr(v)) <= 64)


# --------------------------------------------------------------------------------------------------
# Response builders — plain dicts, ready for orjson
# --------------------------------------------------------------------------------------------------

CHAT_CHUNK_OBJECT = "chat.completion.chunk"
CHAT_OBJECT = "chat.completion"
COMPLETION_OBJECT = "text_completion"


def chat_completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def completion_id(request_id: str) -> str:
    return f"cmpl-{request_id}"


def openai_finish_reason(reason: str) -> str:
    """Engine/stop-checker finish reasons onto the ones OpenAI clients know (stop, length,
    content_filter, tool_calls); a cancelled choice reads as stopped."""
    if reason in ("eos", "stop", "cancelled", "abort"):
        return "stop"
    return reason


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def chat_delta(
    content: str | None = None,
    *,
    role: str | None = None,
    reasoning_content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning_content is not None:
        delta["reasoning_content"] = reasoning_content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return delta


def chat_chunk(
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    *,
    index: int = 0,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return {"id": id, "object": CHAT_CHUNK_OBJECT, "created": created, "model": model, "choices": [choice]}


def chat_usage_chunk(id: str, model: str, created: int, usage: dict[str, Any]) -> dict[str, Any]:
    """The final ``include_usage`` chunk: empty choices, usage filled in."""
    return {"id": id, "object": CHAT_CHUNK_OBJECT, "created": created, "model": model, "choices": [],
            "usage": usage}


def chat_completion(
    id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id, "object": CHAT_OBJECT, "created": created, "model": model,
                            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def chat_choice(
    index: int,
    content: str | None,
    finish_reason: str | None,
    *,
    reasoning_content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice: dict[str, Any] = {"index": index, "message": message, "logprobs": logprobs,
                              "finish_reason": finish_reason}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return choice


def completion_chunk(
    id: str,
    model: str,
    created: int,
    text: str,
    *,
    index: int = 0,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` event (the same object type as the non-stream response)."""
    choice: dict[str, Any] = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return {"id": id, "object": COMPLETION_OBJECT, "created": created, "model": model, "choices": [choice]}


def completion_response(
    id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id, "object": COMPLETION_OBJECT, "created": created, "model": model,
                            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def completion_usage_chunk(id: str, model: str, created: int, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "object": COMPLETION_OBJECT, "created": created, "model": model, "choices": [],
            "usage": usage}


# --------------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------------

HTTP_REASON: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def error_body(
    message: str,
    code: int,
    *,
    param: str | None = None,
    type: str | None = None,
    nested: bool = False,
) -> dict[str, Any]:
    """An error response body.

    Default: Dynamo's flat shape ``{"message", "type", "code"}`` with ``type`` the HTTP reason phrase
    (reference §4.3; §12.9 warns against OpenAI's nested object). ``nested=True`` gives OpenAI's
    ``{"error": {"message", "type", "param", "code"}}`` for clients that need it.
    """
    kind = type or HTTP_REASON.get(code, "Error")
    if nested:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    body: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if param is not None:
        body["param"] = param
    return body
