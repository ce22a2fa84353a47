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


class BootstrapInfo(msgspec.Struct, omit_defaults=True):
    """Where a decode worker meets its prefill worker's KV (bootstrap path, reference §5).

    The prefill worker advertises ``bootstrap_host``/``bootstrap_port`` in its card
    (``runtime_config.disaggregated_endpoint``); the router picks a fresh ``bootstrap_room`` per
    request and sends the same info to both sides, which rendezvous there in either order.
    """

    bootstrap_host: str
    bootstrap_port: int
    bootstrap_room: int


class PrefillResult(msgspec.Struct, omit_defaults=True):
    """What a finished remote prefill hands to the decode worker (synchronous path, reference §5):
    the engine's opaque transfer handle (vLLM ``kv_transfer_params``) and the prompt's cache hits."""

    disaggregated_params: Any = None
    cached_tokens: int | None = None


class RouterConfigOverride(msgspec.Struct, omit_defaults=True):
    """Per-request changes to the KV router's cost function; the decode leg of a disaggregated
    request sets all three off (its prompt's KV arrives from the prefill worker)."""

    overlap_score_weight: float | None = None
    assume_kv_reuse: bool | None = None
    track_prefill_tokens: bool | None = None


class PreprocessedRequest(msgspec.Struct, omit_defaults=True):
    """What a worker's ``generate`` endpoint receives.

    ``prefill_result`` / ``bootstrap_info`` mark the decode leg of a disaggregated request (at most
    one of them); ``router_config_override`` is read by KV routers on the way.
    """

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
    prefill_result: PrefillResult | None = None
    bootstrap_info: BootstrapInfo | None = None
    router_config_override: RouterConfigOverride | None = None


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
