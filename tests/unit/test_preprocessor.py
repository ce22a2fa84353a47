"""OpenAI request -> PreprocessedRequest (reference §4.1 steps 1-5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from dynamo.llm.postprocessor.stop import StopChecker
from dynamo.llm.preprocessor.request import DEFAULT_MAX_TOKENS, OpenAIPreprocessor, fan_out
from dynamo.llm.preprocessor.tokenizer import Tokenizer
from dynamo.llm.protocols.engine import PreprocessedRequest
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.openai import ChatCompletionRequest, CompletionRequest
from dynamo.runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
QWEN3 = DATA / "models" / "Qwen3-0.6B"
TINYLLAMA = DATA / "models" / "TinyLlama_v1.1"
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def qwen_pp() -> OpenAIPreprocessor:
    card = ModelDeploymentCard(name="Qwen/Qwen3-0.6B", model_path=str(QWEN3), context_length=40960)
    return OpenAIPreprocessor.from_card(card)


@pytest.fixture(scope="module")
def llama_pp() -> OpenAIPreprocessor:
    card = ModelDeploymentCard(name="tinyllama", model_path=str(TINYLLAMA), context_length=2048)
    return OpenAIPreprocessor.from_card(card)


def chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "Qwen/Qwen3-0.6B", "messages": CONVERSATION, **kw})


def comp(**kw: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", **kw})


def test_tokenizer_special_tokens() -> None:
    qwen = Tokenizer.from_dir(QWEN3)
    assert qwen.eos_token_ids == [151645, 151643]
    assert qwen.eos_token == "<|im_end|>" and qwen.bos_token is None
    assert {151643, 151644, 151645} <= qwen.special_token_ids
    assert 151667 not in qwen.special_token_ids  # <think> is added but not special
    llama = Tokenizer.from_dir(TINYLLAMA)
    assert (llama.bos_token, llama.eos_token, llama.unk_token) == ("<s>", "</s>", "<unk>")
    assert llama.eos_token_ids == [2]
    assert llama.encode("Hello world", add_special_tokens=True) == [1, 15043, 3186]
    assert qwen.encode("a\x00b") == qwen.encode("ab")


def test_larger_word_cache_tokenizes_exactly_like_the_library() -> None:
    import random

    import tokenizers

    from dynamo.llm.preprocessor.tokenizer import CACHE_WORDS

    ours = Tokenizer.from_dir(QWEN3)
    plain = tokenizers.Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    words = sorted(w[1:] for w in plain.get_vocab() if w.startswith("\u0120") and w[1:].isalpha())
    assert CACHE_WORDS > 10_000 and len(words) > 20_000  # more distinct words than the library's cache
    rng = random.Random(5)
    texts = [" ".join(rng.choices(words, k=3000)) + " 12 ab\u00e9 \u4f60\u597d" for _ in range(12)]
    for _ in range(2):  # the second pass is served from the cache
        for text in texts:
            assert ours.encode(text) == plain.encode(text).ids


def test_chat_prompt_and_defaults(qwen_pp: OpenAIPreprocessor) -> None:
    res = qwen_pp.preprocess_chat(chat(), request_id="r1")
    req = res.request
    assert res.prompt_tokens == 26 and req.token_ids[:3] == [151644, 8948, 198]
    assert res.formatted_prompt is not None and res.formatted_prompt.endswith("<|im_start|>assistant\n")
    assert req.model == "Qwen/Qwen3-0.6B" and req.request_id == "r1"
    assert req.stop_conditions.max_tokens == 40960 - 26  # context_length - prompt_len
    assert req.stop_conditions.stop_token_ids_hidden == [151645, 151643]
    assert req.eos_token_ids == [151645, 151643]
    assert req.mdc_sum
    # the wire encoding round-trips
    wire = msgspec.msgpack.encode(req)
    assert msgspec.msgpack.decode(wire, type=PreprocessedRequest) == req


def test_max_tokens_sources(qwen_pp: OpenAIPreprocessor) -> None:
    assert qwen_pp.preprocess_chat(chat(max_tokens=10)).request.stop_conditions.max_tokens == 10
    r = qwen_pp.preprocess_chat(chat(max_tokens=10, max_completion_tokens=5)).request
    assert r.stop_conditions.max_tokens == 5
    no_ctx = OpenAIPreprocessor(model_name="q", tokenizer=qwen_pp.tokenizer, chat_template=qwen_pp.chat_template)
    assert no_ctx.preprocess_chat(chat()).request.stop_conditions.max_tokens == DEFAULT_MAX_TOKENS


def test_context_length_rejected(qwen_pp: OpenAIPreprocessor) -> None:
    small = OpenAIPreprocessor(model_name="q", tokenizer=qwen_pp.tokenizer, chat_template=qwen_pp.chat_template,
                               context_length=26)
    with pytest.raises(InvalidArgument, match=r"maximum context length is 26 tokens.*26 input tokens"):
        small.preprocess_chat(chat())
    ok = OpenAIPreprocessor(model_name="q", tokenizer=qwen_pp.tokenizer, chat_template=qwen_pp.chat_template,
                            context_length=27)
    assert ok.preprocess_chat(chat()).request.stop_conditions.max_tokens == 1


def test_stop_sampling_and_output_options(qwen_pp: OpenAIPreprocessor) -> None:
    req = qwen_pp.preprocess_chat(chat(
        stop=["END", "###"], min_tokens=2, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, seed=3, n=2,
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.1, include_stop_str_in_output=True,
        logprobs=True, top_logprobs=3, skip_special_tokens=True,
    )).request
    sc = req.stop_conditions
    assert (sc.stop, sc.min_tokens, sc.ignore_eos) == (["END", "###"], 2, None)
    so = req.sampling_options
    assert (so.temperature, so.top_p, so.top_k, so.min_p, so.seed, so.n) == (0.7, 0.9, 20, 0.05, 3, 2)
    assert (so.presence_penalty, so.frequency_penalty, so.repetition_penalty) == (0.5, -0.5, 1.1)
    assert so.include_stop_str_in_output is True
    assert (req.output_options.logprobs, req.output_options.skip_special_tokens) == (3, True)
    assert qwen_pp.preprocess_chat(chat(logprobs=True)).request.output_options.logprobs == 0
    assert qwen_pp.preprocess_chat(chat()).request.output_options.logprobs is None


def test_ignore_eos_clears_hidden_ids(qwen_pp: OpenAIPreprocessor) -> None:
    for body in ({"ignore_eos": True}, {"nvext": {"ignore_eos": True}}):
        req = qwen_pp.preprocess_chat(chat(**body)).request
        assert req.stop_conditions.stop_token_ids_hidden is None
        assert req.stop_conditions.ignore_eos is True
        assert req.eos_token_ids == []
    extra = qwen_pp.preprocess_chat(chat(stop_token_ids=[13])).request
    assert extra.stop_conditions.stop_token_ids_hidden == [151645, 151643, 13]


def test_tools_and_template_kwargs(qwen_pp: OpenAIPreprocessor) -> None:
    with_tools = qwen_pp.preprocess_chat(chat(tools=[TOOL]))
    assert "# Tools" in (with_tools.formatted_prompt or "")
    none = qwen_pp.preprocess_chat(chat(tools=[TOOL], tool_choice="none"))
    assert none.prompt_tokens == 26
    no_think = qwen_pp.preprocess_chat(chat(chat_template_kwargs={"enable_thinking": False}))
    assert (no_think.formatted_prompt or "").endswith("<think>\n\n</think>\n\n")


def test_guided_decoding_and_routing_hints(qwen_pp: OpenAIPreprocessor) -> None:
    r = qwen_pp.preprocess_chat(chat(response_format={"type": "json_object"})).request
    assert r.sampling_options.guided_decoding == {"json_object": True}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = qwen_pp.preprocess_chat(chat(response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                                               "schema": schema}})).request
    assert r.sampling_options.guided_decoding == {"json": schema}
    r = qwen_pp.preprocess_chat(chat(guided_regex="[a-z]+")).request
    assert r.sampling_options.guided_decoding == {"regex": "[a-z]+"}
    r = qwen_pp.preprocess_chat(chat(nvext={"backend_instance_id": 9, "dp_rank": 1,
                                            "agent_hints": {"priority": 2, "osl": 64},
                                            "annotations": ["formatted_prompt"]})).request
    assert r.routing is not None
    assert (r.routing.backend_instance_id, r.routing.dp_rank, r.routing.priority,
            r.routing.expected_output_tokens) == (9, 1, 2, 64)
    assert r.annotations == ["formatted_prompt"]
    assert qwen_pp.preprocess_chat(chat()).request.routing is None


def test_sla_targets_travel_in_extra_args(qwen_pp: OpenAIPreprocessor) -> None:
    r = qwen_pp.preprocess_chat(chat(nvext={"router": {"ttft_target": 120, "itl_target": 7.5}})).request
    assert r.extra_args == {"ttft_target": 120, "itl_target": 7.5}
    r = qwen_pp.preprocess_chat(chat(nvext={"router": {"itl_target": 3}})).request
    assert r.extra_args == {"itl_target": 3}
    assert qwen_pp.preprocess_chat(chat()).request.extra_args is None
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        chat(nvext={"router": {"ttft_target": -1}})


def test_completion_text_prompt_adds_bos(llama_pp: OpenAIPreprocessor) -> None:
    (res,) = llama_pp.preprocess_completion(comp(prompt="Hello world", max_tokens=8), request_id="c")
    assert res.request.token_ids == [1, 15043, 3186]
    assert res.formatted_prompt == "Hello world" and res.prompt_tokens == 3
    assert res.request.request_id == "c"
    assert res.request.stop_conditions.max_tokens == 8
    (raw,) = llama_pp.preprocess_completion(comp(prompt="Hello world", add_special_tokens=False))
    assert raw.request.token_ids == [15043, 3186]
    assert raw.request.stop_conditions.max_tokens == 2048 - 2


def test_completion_token_prompts_and_fan_out(llama_pp: OpenAIPreprocessor) -> None:
    (one,) = llama_pp.preprocess_completion(comp(prompt=[1, 15043, 3186]))
    assert one.request.token_ids == [1, 15043, 3186] and one.formatted_prompt is None
    many = llama_pp.preprocess_completion(comp(prompt=["a", "b c", "d"], n=2), request_id="rid")
    assert [r.request.request_id for r in many] == ["rid-0", "rid-1", "rid-2"]
    assert [r.request.token_ids[0] for r in many] == [1, 1, 1]
    assert [off for off, _ in fan_out(many, 2)] == [0, 2, 4]
    batch = llama_pp.preprocess_completion(comp(prompt=[[5, 6], [7]]), request_id="b")
    assert [r.request.token_ids for r in batch] == [[5, 6], [7]]
    with pytest.raises(InvalidArgument, match="out of vocabulary"):
        llama_pp.preprocess_completion(comp(prompt=[1, 32000]))
    with pytest.raises(InvalidArgument, match="128"):
        llama_pp.preprocess_completion(comp(prompt=["x"] * 65, n=2))
    with pytest.raises(InvalidArgument, match="maximum context length"):
        llama_pp.preprocess_completion(comp(prompt=[5] * 2048))


def test_chat_on_model_without_template(llama_pp: OpenAIPreprocessor) -> None:
    with pytest.raises(InvalidArgument, match="no chat template"):
        llama_pp.preprocess_chat(chat())


def test_template_error_is_invalid_argument(tmp_path: Path) -> None:
    custom = tmp_path / "t.jinja"
    custom.write_text("{{ raise_exception('only user messages') }}", encoding="utf-8")
    card = ModelDeploymentCard(name="q", model_path=str(QWEN3))
    pp = OpenAIPreprocessor.from_card(card, custom_template_path=custom)
    with pytest.raises(InvalidArgument, match="only user messages"):
        pp.preprocess_chat(chat())


def test_end_to_end_with_stop_checker(qwen_pp: OpenAIPreprocessor) -> None:
    res = qwen_pp.preprocess_chat(chat(stop=[" Paris"], max_tokens=50))
    tok = qwen_pp.tokenizer
    sc = StopChecker.for_request(tok, res.request)
    out = ""
    for t in [*tok.encode("The capital of France is Paris."), 151645]:
        step = sc.process([t])
        out += step.text
        if step.finish_reason:
            break
    assert out == "The capital of France is"
    assert (sc.finish_reason, sc.stop_reason) == ("stop", " Paris")


def test_request_over_the_context_length_does_not_enter_the_render_cache() -> None:
    card = ModelDeploymentCard(name="q", model_path=str(QWEN3), context_length=64)
    pp = OpenAIPreprocessor.from_card(card)
    cache = pp.chat_template.render_cache  # type: ignore[union-attr]
    long = chat(messages=[{"role": "user", "content": "word " * 200}])
    with pytest.raises(InvalidArgument, match="maximum context length is 64"):
        pp.preprocess_chat(long)
    assert len(cache) == 0
    with pytest.raises(InvalidArgument):
        pp.preprocess_chat(long)
    assert len(cache) == 0 and cache.hits == 0
    # A request that fits is remembered, and served from the cache the second time.
    short = chat(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    first = pp.preprocess_chat(short)
    assert len(cache) == 1
    assert pp.preprocess_chat(short).request.token_ids == first.request.token_ids and cache.hits == 1
