"""PreprocessedRequest -> vLLM sampling arguments, and vLLM outputs -> LLMEngineOutput fields.

Pure functions over plain values (no vLLM import), so the mapping is unit-tested without an engine.
Stop strings are not passed: the frontend matches them on its own detokenized text, and the engine
runs with ``detokenize=False``. EOS and hidden stop ids are passed as ``stop_token_ids`` so the
engine stops (and frees the sequence's KV blocks) itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo.llm.protocols.engine import PreprocessedRequest
from dynamo.runtime.errors import InvalidArgument

#: vLLM ``CompletionOutput.finish_reason`` -> our engine finish reasons
_FINISH = {"length": "length", "abort": "cancelled", "error": "error"}

GUIDED_KEYS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def sampling_kwargs(request: PreprocessedRequest) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` (without the structured-output object)."""
    sc = request.stop_conditions
    so = request.sampling_options
    oo = request.output_options
    if sc.max_tokens is None:
        raise InvalidArgument("stop_conditions.max_tokens is required")
    kw: dict[str, Any] = {"max_tokens": sc.max_tokens, "detokenize": False, "n": 1}
    if sc.min_tokens:
        kw["min_tokens"] = sc.min_tokens
    if sc.ignore_eos:
        kw["ignore_eos"] = True
    else:
        stop_ids = list(dict.fromkeys([*request.eos_token_ids, *(sc.stop_token_ids_hidden or ())]))
        if stop_ids:
            kw["stop_token_ids"] = stop_ids
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
                 "repetition_penalty"):
        value = getattr(so, name)
        if value is not None:
            kw[name] = value
    if oo.logprobs is not None:
        kw["logprobs"] = oo.logprobs
    if oo.prompt_logprobs is not None:
        kw["prompt_logprobs"] = oo.prompt_logprobs
    return kw


def guided_decoding(request: PreprocessedRequest) -> dict[str, Any] | None:
    """The structured-output spec (``json`` / ``regex`` / ``choice`` / ``grammar`` / ``json_object``)."""
    spec = request.sampling_options.guided_decoding
    if not spec:
        return None
    unknown = set(spec) - set(GUIDED_KEYS) - {"backend", "whitespace_pattern"}
    if unknown:
        raise InvalidArgument(f"unknown guided decoding option(s): {', '.join(sorted(unknown))}")
    kinds = [k for k in GUIDED_KEYS if spec.get(k) is not None]
    if len(kinds) != 1:
        raise InvalidArgument("guided decoding takes exactly one of json, regex, choice, grammar, json_object")
    return {k: v for k, v in spec.items() if k != "backend"}


def finish_reason(reason: str | None, stop_reason: int | str | None, eos_ids: Sequence[int]) -> str | None:
    """vLLM's ``finish_reason``/``stop_reason`` -> ``eos`` / ``stop`` / ``length`` / ``cancelled`` / ``error``."""
    if reason is None:
        return None
    if reason == "stop":
        return "eos" if stop_reason is None or stop_reason in eos_ids else "stop"
    return _FINISH.get(reason, reason)


def logprob_fields(token_ids: Sequence[int], logprobs: Sequence[Mapping[int, Any]] | None, k: int,
                   ) -> tuple[list[float] | None, list[list[tuple[int, float]]] | None]:
    """Per generated token: its log probability, and the ``k`` most likely candidates as
    ``(token_id, logprob)`` by rank. vLLM adds the sampled token to each map even when it ranks below
    ``k``; it is reported in the first list but left out of the second."""
    if not logprobs:
        return None, None
    chosen: list[float] = []
    top: list[list[tuple[int, float]]] = []
    for tid, entry in zip(token_ids, logprobs, strict=False):
        lp = entry.get(tid)
        chosen.append(float(lp.logprob) if lp is not None else float("-inf"))
        ranked = sorted(((getattr(v, "rank", None) or 0, t, v.logprob) for t, v in entry.items()))
        top.append([(int(t), float(v)) for rank, t, v in ranked if rank <= k][:k])
    return chosen, top
