"""Incremental detokenizer and stop handling, replayed against recorded engine streams."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.llm.postprocessor.detokenizer import IncrementalDetokenizer
from dynamo.llm.postprocessor.stop import StopChecker, StopStringJail
from dynamo.llm.preprocessor.tokenizer import Tokenizer
from dynamo.llm.protocols.engine import LLMEngineOutput

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STREAMS = DATA / "dynamo" / "engine_streams"
QWEN3_STREAMS = sorted(STREAMS.glob("*/qwen3-0.6B/*.json")) + sorted((STREAMS / "replays").glob("*.jsonl"))
SSE_REPLAYS = [*sorted(p for p in (STREAMS / "replays").rglob("*.streaming.*")), STREAMS / "replays" / "deepseek-r1-distill-llama-8b" / "chat-completions.stream.1"]
EOS = 151645
EOT = 151643


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    return Tokenizer.from_dir(DATA / "models" / "Qwen3-0.6B")


@pytest.fixture(scope="module")
def llama() -> Tokenizer:
    return Tokenizer.from_dir(DATA / "models" / "TinyLlama_v1.1")


def recorded_chunks(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [item["data"] for item in json.loads(path.read_text(encoding="utf-8"))["input_stream"]]


def recorded_deltas(path: Path) -> list[str]:
    return [(c["choices"][0]["delta"].get("content") or "") for c in recorded_chunks(path) if c["choices"]]


def sse_events(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def sse_texts(path: Path) -> list[str]:
    out = []
    for ev in sse_events(path):
        for ch in ev["choices"]:
            text = ch.get("text") if "text" in ch else (ch.get("delta") or {}).get("content")
            out.append(text or "")
    return out


# -- detokenizer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", QWEN3_STREAMS, ids=[p.name for p in QWEN3_STREAMS])
def test_replay_qwen3_streams_token_by_token(path: Path, qwen: Tokenizer) -> None:
    """The Qwen3 recordings are one token per chunk: re-tokenising each delta recovers the engine's
    ids; feeding them back must reproduce every recorded delta exactly."""
    deltas = recorded_deltas(path)
    per_chunk = [qwen.encode(d) for d in deltas]
    full = "".join(deltas)
    assert [t for ids in per_chunk for t in ids] == qwen.encode(full)
    prompt = qwen.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    detok = IncrementalDetokenizer(qwen, prompt)
    emitted = [detok.step(ids) for ids in per_chunk]
    assert emitted == deltas
    assert detok.flush() == ""


@pytest.mark.parametrize("path", SSE_REPLAYS, ids=[str(p.relative_to(STREAMS)) for p in SSE_REPLAYS])
def test_replay_sse_text_through_qwen3_ids(path: Path, qwen: Tokenizer) -> None:
    """Other models' recordings carry text only: tokenise it with Qwen3 (byte-level BPE round-trips
    any text) and check the streamed reconstruction is exact and always a prefix of the recording."""
    deltas = sse_texts(path)
    full = "".join(deltas)
    ids = qwen.encode(full)
    detok = IncrementalDetokenizer(qwen, qwen.encode("Question: "))
    out = ""
    for t in ids:
        out += detok.step(t)
        assert full.startswith(out)
        assert "\ufffd" not in out
    out += detok.flush()
    assert out == full


def test_replay_logprob_tokens_by_id(qwen: Tokenizer) -> None:
    """The DeepSeek-R1-Distill-Llama recording carries each token's byte-level BPE string and bytes:
    map the strings to Qwen3 ids (same byte alphabet) and decode them incrementally."""
    path = STREAMS / "replays" / "deepseek-r1-distill-llama-8b" / "chat-completions.stream.1"
    tokens: list[tuple[str, bytes, str]] = []
    for ev in sse_events(path):
        ch = ev["choices"][0]
        lp = ch.get("logprobs")
        if lp and lp.get("content"):
            (entry,) = lp["content"]
            tokens.append((entry["token"], bytes(entry["bytes"]), ch["delta"]["content"]))
    assert len(tokens) == 32
    detok = IncrementalDetokenizer(qwen)
    for tok_str, raw, content in tokens:
        tid = qwen.token_to_id(tok_str)
        assert tid is not None, tok_str
        assert raw.decode("utf-8") == tok_str  # the recorded bytes are the token string's
        assert detok.step(tid) == content


def test_sentencepiece_leading_space_needs_prompt_context(llama: Tokenizer) -> None:
    full = llama.encode("The answer is forty two", add_special_tokens=True)
    prompt = llama.encode("The answer is", add_special_tokens=True)
    assert full[:len(prompt)] == prompt
    ids = full[len(prompt):]
    detok = IncrementalDetokenizer(llama, prompt)
    assert "".join(detok.step(t) for t in ids) == " forty two"
    # without left context the decoder's Strip eats the first space
    bare = IncrementalDetokenizer(llama)
    assert "".join(bare.step(t) for t in ids) == "forty two"


@pytest.mark.parametrize("text", ["🎉🚀 done", "你好，世界", "naïve café ☕", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩‍👩‍👧‍👦"])
def test_multibyte_split_across_tokens_never_emits_replacement(text: str, qwen: Tokenizer, llama: Tokenizer) -> None:
    for tok in (qwen, llama):
        ids = tok.encode(text)
        assert len(ids) > 1
        detok = IncrementalDetokenizer(tok, [])
        parts = [detok.step(t) for t in ids]
        assert all("\ufffd" not in p for p in parts)
        assert "".join(parts) + detok.flush() == tok.decode(ids)


def test_emoji_bytes_are_held_until_complete(llama: Tokenizer) -> None:
    ids = llama.encode("🎉", add_special_tokens=False)  # ▁ + 4 byte-fallback tokens
    detok = IncrementalDetokenizer(llama, llama.encode("x", add_special_tokens=True))
    parts = [detok.step(t) for t in ids]
    assert parts[1:-1] == ["", "", ""]
    assert "".join(parts) == " 🎉"


def test_truncated_character_is_dropped_at_flush(qwen: Tokenizer) -> None:
    ids = qwen.encode("ok 🎉")
    detok = IncrementalDetokenizer(qwen)
    text = "".join(detok.step(t) for t in ids[:-1])  # the last byte of the emoji never arrives
    assert text + detok.flush() == "ok "


def test_skip_special_tokens(qwen: Tokenizer) -> None:
    ids = qwen.encode("<|im_start|>assistant\nHi<|im_end|>")
    skipping = IncrementalDetokenizer(qwen, skip_special_tokens=True)
    assert "".join(skipping.step(t) for t in ids) == "assistant\nHi"
    keeping = IncrementalDetokenizer(qwen)
    assert "".join(keeping.step(t) for t in ids) == "<|im_start|>assistant\nHi<|im_end|>"


class _CountingTokenizer:
    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.max_len = 0
        self.calls = 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        self.calls += 1
        self.max_len = max(self.max_len, len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


def test_per_token_work_is_bounded(qwen: Tokenizer) -> None:
    text = (DATA / "dynamo" / "README.md").read_text(encoding="utf-8") * 3
    ids = qwen.encode(text)
    assert len(ids) > 3000
    counting = _CountingTokenizer(qwen)
    detok = IncrementalDetokenizer(counting, ids[:10])
    out = "".join(detok.step(t) for t in ids)
    assert out == qwen.decode(ids)
    assert counting.calls <= 2 * len(ids)
    assert counting.max_len <= 8  # a small window, never the whole sequence
    assert len(detok._ids) < 1100  # consumed ids are compacted away


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=40), chunking=st.randoms(use_true_random=False))
def test_property_any_text_any_batching(text: str, chunking: random.Random, qwen: Tokenizer) -> None:
    ids = qwen.encode(text)
    expected = qwen.decode(ids)
    detok = IncrementalDetokenizer(qwen, qwen.encode("prefix"))
    out, i = "", 0
    while i < len(ids):
        k = chunking.randint(1, 4)
        part = detok.step(ids[i:i + k])
        assert "\ufffd" not in part or "\ufffd" in expected
        out += part
        i += k
    out += detok.flush()
    assert out == expected


# -- stop handling -----------------------------------------------------------------------------------


def checker(tok: Tokenizer | None, **kw: Any) -> StopChecker:
    kw.setdefault("hidden_stop_ids", [EOS, EOT])
    return StopChecker(tok, **kw)


def run(sc: StopChecker, items: Sequence[Sequence[int]], finish_last: str | None = None) -> tuple[str, Any]:
    out, last = "", None
    for i, ids in enumerate(items):
        fr = finish_last if i == len(items) - 1 else None
        last = sc.process(ids, finish_reason=fr)
        out += last.text
        if last.finish_reason:
            break
    return out, last


def test_eos_hidden_stop(qwen: Tokenizer) -> None:
    ids = [*qwen.encode("Paris."), EOS]
    sc = checker(qwen)
    out, last = run(sc, [[t] for t in ids])
    assert out == "Paris."
    assert (last.finish_reason, last.stop_reason, last.stop_worker, last.num_tokens) == ("stop", None, True, 0)
    assert sc.num_generated == len(ids)
    # the engine itself reported eos with the same item: no need to tell it to stop
    sc2 = checker(qwen)
    res = sc2.process_output(LLMEngineOutput(token_ids=ids, finish_reason="eos"))
    assert (res.text, res.finish_reason, res.stop_worker, res.num_tokens) == ("Paris.", "stop", False, len(ids) - 1)
    # tokens after EOS inside the same item are discarded
    sc3 = checker(qwen)
    res = sc3.process([*qwen.encode("A"), EOS, *qwen.encode("B")])
    assert (res.text, res.finish_reason) == ("A", "stop")
    assert sc3.process(qwen.encode("more")).text == ""


def test_min_tokens_and_ignore_eos_skip_eos(qwen: Tokenizer) -> None:
    a = qwen.encode("a")
    sc = checker(qwen, min_tokens=3)
    r1 = sc.process([*a, EOS])  # tokens 1-2: EOS ignored (skip_special_tokens=False shows it)
    assert r1.finish_reason is None and r1.text == "a<|im_end|>"
    r2 = sc.process([EOS])  # token 3: min reached (vLLM counts the EOS) -> stop
    assert r2.finish_reason == "stop"
    sc = checker(qwen, ignore_eos=True, max_tokens=3)
    _out, last = run(sc, [[EOS], [EOS], [EOS]])
    assert last.finish_reason == "length"


def test_max_tokens_length_in_batched_items(qwen: Tokenizer) -> None:
    ids = qwen.encode("one two three four five six seven")
    sc = checker(qwen, max_tokens=4)
    r1 = sc.process(ids[:3])
    r2 = sc.process(ids[3:6])
    assert r1.finish_reason is None
    assert (r2.finish_reason, r2.num_tokens, r2.stop_worker) == ("length", 1, True)
    assert r1.text + r2.text == qwen.decode(ids[:4])
    # EOS exactly at the limit is a stop, not a length
    sc = checker(qwen, max_tokens=4)
    assert sc.process([*ids[:3], EOS]).finish_reason == "stop"
    # engine-reported length with the last token: no stop control needed
    sc = checker(qwen, max_tokens=2)
    r = sc.process(ids[:2], finish_reason="length")
    assert (r.finish_reason, r.stop_worker) == ("length", False)


@pytest.mark.parametrize("path", QWEN3_STREAMS[:4], ids=[p.name for p in QWEN3_STREAMS[:4]])
@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_cut_recorded_streams(path: Path, include: bool, qwen: Tokenizer) -> None:
    deltas = recorded_deltas(path)
    full = "".join(deltas)
    for stop in ["</think>", "\n\n", " the", "Okay"]:
        at = full.find(stop)
        if at < 0:
            continue
        sc = checker(qwen, stop=[stop, "NEVER-APPEARS-xyz"], include_stop_str_in_output=include)
        out, last = run(sc, [qwen.encode(d) for d in deltas])
        assert out == full[:at + len(stop)] if include else out == full[:at]
        assert (last.finish_reason, last.stop_reason, last.stop_worker) == ("stop", stop, True)


@pytest.mark.parametrize("path", SSE_REPLAYS[:6], ids=[str(p.relative_to(STREAMS)) for p in SSE_REPLAYS[:6]])
def test_stop_strings_on_text_only_streams(path: Path) -> None:
    deltas = sse_texts(path)
    full = "".join(deltas)
    stop = full[len(full) // 2: len(full) // 2 + 5]
    sc = StopChecker(None, stop=[stop])
    out = ""
    for d in deltas:
        r = sc.process([], text=d)
        out += r.text
        if r.finish_reason:
            break
    assert out == full[:full.find(stop)]
    assert sc.stop_reason == stop


def test_partial_stop_prefix_released_when_disproved_or_stream_ends(qwen: Tokenizer) -> None:
    sc = StopChecker(None, stop=["STOP"])
    assert sc.process([], text="abc ST").text == "abc "
    assert sc.process([], text="AR").text == "STAR"
    assert sc.process([], text=" ST").text == " "
    r = sc.process([], text="", finish_reason="length")
    assert (r.text, r.finish_reason, r.stop_worker) == ("ST", "length", False)
    # jailed text is flushed when max_tokens ends the stream
    ids = qwen.encode("hello ST")
    sc = StopChecker(qwen, stop=["STOP"], max_tokens=len(ids))
    out, last = run(sc, [[t] for t in ids])
    assert out == "hello ST" and last.finish_reason == "length"


def test_engine_finish_reasons_mapped(qwen: Tokenizer) -> None:
    sc = StopChecker(qwen)
    r = sc.process(qwen.encode("x"), finish_reason="stop", stop_reason="###")
    assert (r.finish_reason, r.stop_reason) == ("stop", "###")
    assert StopChecker(qwen).process([], finish_reason="eos").finish_reason == "stop"
    assert StopChecker(qwen).process([], finish_reason="error").finish_reason == "error"


def test_for_request_reads_preprocessed_request(qwen: Tokenizer) -> None:
    from dynamo.llm.protocols.engine import PreprocessedRequest, SamplingOptions, StopConditions

    req = PreprocessedRequest(
        model="m", token_ids=qwen.encode("hi"),
        stop_conditions=StopConditions(max_tokens=50, stop=["!"], stop_token_ids_hidden=[EOS]),
        sampling_options=SamplingOptions(include_stop_str_in_output=True),
    )
    sc = StopChecker.for_request(qwen, req)
    out, last = run(sc, [[t] for t in qwen.encode("Hey! you")])
    assert out == "Hey!" and last.stop_reason == "!"


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet="abcST P!\n", max_size=60),
    stops=st.lists(st.text(alphabet="abcST P!\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12),
    include=st.booleans(),
)
def test_property_jail_matches_brute_force(text: str, stops: list[str], cuts: list[int], include: bool) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    jail = StopStringJail(stops, include_in_output=include)
    out, matched = "", None
    for p in pieces:
        emitted, matched = jail.push(p)
        out += emitted
        if matched is not None:
            break
    if matched is None:
        out += jail.flush()
    # brute force: earliest occurrence of any stop string, longest on ties
    hits = [(text.find(s), -len(s), s) for s in stops if s in text]
    if hits:
        at, _, s = min(hits)
        assert matched == s
        assert out == text[:at + len(s)] if include else out == text[:at]
    else:
        assert matched is None and out == text


def test_jail_state_is_linear_in_the_stop_strings() -> None:
    """A stop string of length L must cost O(L) memory, not every one of its prefixes (O(L^2))."""
    import tracemalloc

    stops = ["ab" * 512, "z" * 1024]
    tracemalloc.start()
    try:
        jail = StopStringJail(stops)
        built, _ = tracemalloc.get_traced_memory()
        # Feed text that keeps nearly matching (the worst case for a suffix/prefix search).
        out = ""
        for _ in range(200):
            emitted, matched = jail.push("ab" * 50 + "b")
            assert matched is None
            out += emitted
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 2 x 1024 chars of stop strings: the prefix-set design allocated over 1 MB here.
    assert built < 100_000, built
    assert peak < 200_000, peak
    assert jail.held == ""  # "...bb" is not a prefix of "abab..."
    emitted, matched = jail.push("ab" * 512)
    assert matched == "ab" * 512 and emitted == ""
