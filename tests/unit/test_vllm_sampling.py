"""The vLLM worker's pure parts: request -> sampling arguments, outputs -> our fields, flag validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dynamo.llm.protocols.engine import (
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.runtime.errors import ConfigError, InvalidArgument
from dynamo.vllm import sampling
from dynamo.vllm.args import VllmConfig

pytestmark = pytest.mark.unit


def request(**kw: object) -> PreprocessedRequest:
    base = {"model": "m", "token_ids": [1, 2, 3], "stop_conditions": StopConditions(max_tokens=8),
            "eos_token_ids": [151645, 151643]}
    base.update(kw)
    return PreprocessedRequest(**base)  # type: ignore[arg-type]


def test_stop_ids_are_eos_plus_hidden_ids_and_never_stop_strings() -> None:
    kw = sampling.sampling_kwargs(request(stop_conditions=StopConditions(
        max_tokens=8, min_tokens=2, stop=["END"], stop_token_ids_hidden=[151643, 7])))
    assert kw == {"max_tokens": 8, "min_tokens": 2, "detokenize": False, "n": 1,
                  "stop_token_ids": [151645, 151643, 7]}


def test_ignore_eos_passes_no_stop_ids() -> None:
    kw = sampling.sampling_kwargs(request(stop_conditions=StopConditions(max_tokens=4, ignore_eos=True)))
    assert kw["ignore_eos"] is True and "stop_token_ids" not in kw


def test_sampling_and_output_options_map_one_to_one() -> None:
    so = SamplingOptions(temperature=0.5, top_p=0.9, top_k=20, min_p=0.05, seed=11, presence_penalty=0.1,
                         frequency_penalty=0.2, repetition_penalty=1.1)
    kw = sampling.sampling_kwargs(request(sampling_options=so, output_options=OutputOptions(logprobs=3,
                                                                                               prompt_logprobs=1)))
    assert {k: kw[k] for k in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                                "frequency_penalty", "repetition_penalty", "logprobs", "prompt_logprobs")} == {
        "temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 11, "presence_penalty": 0.1,
        "frequency_penalty": 0.2, "repetition_penalty": 1.1, "logprobs": 3, "prompt_logprobs": 1}


def test_missing_max_tokens_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        sampling.sampling_kwargs(request(stop_conditions=StopConditions()))


@pytest.mark.parametrize(("spec", "expected"), [
    (None, None),
    ({"json": {"type": "object"}}, {"json": {"type": "object"}}),
    ({"regex": "a+", "backend": "xgrammar"}, {"regex": "a+"}),
    ({"choice": ["yes", "no"]}, {"choice": ["yes", "no"]}),
    ({"json_object": True}, {"json_object": True}),
])
def test_guided_decoding(spec: dict | None, expected: dict | None) -> None:
    assert sampling.guided_decoding(request(sampling_options=SamplingOptions(guided_decoding=spec))) == expected


@pytest.mark.parametrize("spec", [{"regex": "a", "choice": ["b"]}, {"nonsense": 1}, {"backend": "x"}])
def test_guided_decoding_rejects_ambiguous_or_unknown_specs(spec: dict) -> None:
    with pytest.raises(InvalidArgument):
        sampling.guided_decoding(request(sampling_options=SamplingOptions(guided_decoding=spec)))


@pytest.mark.parametrize(("reason", "stop_reason", "expected"), [
    (None, None, None), ("length", None, "length"), ("stop", None, "eos"), ("stop", 151645, "eos"),
    ("stop", 7, "stop"), ("abort", None, "cancelled"), ("error", None, "error"),
])
def test_finish_reasons(reason: str | None, stop_reason: int | None, expected: str | None) -> None:
    assert sampling.finish_reason(reason, stop_reason, [151645, 151643]) == expected


def test_logprobs_keep_the_sampled_token_out_of_the_top_k() -> None:
    lp = SimpleNamespace
    entries = [{5: lp(logprob=-9.0, rank=400), 1: lp(logprob=-1.0, rank=1), 2: lp(logprob=-2.0, rank=2)},
               {1: lp(logprob=-0.5, rank=1), 3: lp(logprob=-1.5, rank=2)}]
    chosen, top = sampling.logprob_fields([5, 1], entries, 2)
    assert chosen == [-9.0, -0.5]
    assert top == [[(1, -1.0), (2, -2.0)], [(1, -0.5), (3, -1.5)]]
    assert sampling.logprob_fields([1], None, 2) == (None, None)


@pytest.mark.parametrize(("fields", "message"), [
    ({"is_prefill_worker": True, "is_decode_worker": True}, "mutually exclusive"),
    ({"multimodal_worker": True, "multimodal_processor": True, "enable_multimodal": True}, "mutually exclusive"),
    ({"multimodal_worker": True}, "needs --enable-multimodal"),
    ({"vllm_native_encoder_worker": True}, "--ec-storage-path"),
    ({"stage_configs_path": "x.yaml"}, "only valid with --omni"),
    ({"ec_extra_config": "{nope"}, "not valid JSON"),
    ({"migration_limit": 1024}, "[0, 1023]"),
    ({"use_vllm_tokenizer": True}, "not available yet"),
    ({"omni": True}, "not available yet"),
])
def test_flag_validation(fields: dict, message: str) -> None:
    config = VllmConfig()
    for k, v in fields.items():
        setattr(config, k, v)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.validate()


def test_default_config_is_valid_and_names_its_endpoint() -> None:
    config = VllmConfig()
    config.validate()
    assert config.endpoint_url == "dyn://dynamo.backend.generate" and config.role == "aggregated"
    config.is_prefill_worker = True
    config.validate()
    assert config.endpoint_url == "dyn://dynamo.prefill.generate" and config.role == "prefill"
