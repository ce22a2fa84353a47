"""Token-level request/response between the frontend and engine workers (reference §4.1)."""

from __future__ import annotations

from typing import Any

import msgspec


class StopConditions(msgspec.Struct, omit_defaults=True):
    max_tokens: int | None = None
    stop: list[str] | None = None
    stop_token_ids_hidden: list[int] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None


class SamplingOptions(msgspec.Struct, omit_defaults=True):
    n: int | None = None
    best_of: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    include_stop_str_in_output: bool | None = None
    guided_decoding: dict[str, Any] | None = None


class OutputOptions(msgspec.Struct, omit_defaults=True):
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool | None = None


class RoutingHints(msgspec.Struct, omit_defaults=True):
    backend_instance_id: int | None = None
    dp_rank: int | None = None
    lora_name: str | None = None
    priority: int | None = None
    expected_output_tokens: int | None = None


class PreprocessedRequest(msgspec.Struct, omit_defaults=True):
    """What a worker's ``generate`` endpoint receives."""

    model: str
    token_ids: list[int]
    stop_conditions: StopConditions = msgspec.field(default_factory=StopConditions)
    sampling_options: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    output_options: OutputOptions = msgspec.field(default_factory=OutputOptions)
    eos_token_ids: list[int] = msgspec.field(default_factory=list)
    mdc_sum: str | None = None
    annotations: list[str] = msgspec.field(default_factory=list)
    routing: RoutingHints | None = None
    request_id: str | None = None
    extra_args: dict[str, Any] | None = None


class CompletionUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None


class LLMEngineOutput(msgspec.Struct, omit_defaults=True):
    """One streamed item from a worker: every token produced since the previous item.

    ``finish_reason`` is one of ``eos``, ``length``, ``stop``, ``error``, ``cancelled``.
    """

    token_ids: list[int] = msgspec.field(default_factory=list)
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None
    cum_log_probs: float | None = None
    log_probs: list[float] | None = None
    #: per token, the most likely candidates as ``(token_id, logprob)`` (when logprobs were asked for)
    top_logprobs: list[list[tuple[int, float]]] | None = None
    index: int | None = None
    disaggregated_params: Any = None
    completion_usage: CompletionUsage | None = None
    extra_args: dict[str, Any] | None = None


def merge_outputs(a: LLMEngineOutput, b: LLMEngineOutput) -> LLMEngineOutput | None:
    """Fold ``b`` into ``a`` when ``a`` carries nothing but token ids (the common case).

    Lets a consumer that fell behind process a burst of items as one: fewer detokenizer steps,
    fewer SSE writes. Returns None when the two cannot be combined losslessly.
    """
    if (a.finish_reason is not None or a.text is not None or a.log_probs is not None or a.index != b.index
            or a.completion_usage is not None or a.extra_args is not None or a.disaggregated_params is not None
            or a.cum_log_probs is not None or a.top_logprobs is not None or b.text is not None
            or b.log_probs is not None or b.top_logprobs is not None):
        return None
    b.token_ids = a.token_ids + b.token_ids
    return b
