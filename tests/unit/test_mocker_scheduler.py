"""The mocker's vLLM-style scheduler (reference §3.2, §10.3) and its engine args (§3.6)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.protocols import KvRemoved, KvStored, RouterEvent
from dynamo.mocker.args import MockEngineArgs, ReasoningConfig
from dynamo.mocker.scheduler import PassResult, Scheduler
from dynamo.runtime.errors import ConfigError, InvalidArgument

pytestmark = pytest.mark.unit


def make(**kw: object) -> Scheduler:
    kw.setdefault("seed", 7)
    return Scheduler(MockEngineArgs(**kw))  # type: ignore[arg-type]


def prompt(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def run_until_idle(s: Scheduler, limit: int = 10_000) -> list[PassResult]:
    out = []
    while not s.is_idle:
        out.append(s.step())
        assert len(out) < limit, "scheduler did not drain"
    return out


# ------------------------------------------------------------------------------------ §10.3 behaviours


def test_running_requests_consume_budget_before_waiting_ones() -> None:
    s = make(max_num_batched_tokens=100, block_size=4, num_gpu_blocks=1000)
    s.add_request("old", prompt(250), 5)
    r1 = s.step()
    assert r1.prefill_tokens == {"old": 100}
    s.add_request("new", prompt(50, start=5000), 5)
    r2 = s.step()
    # the running request takes the whole budget; the waiting one is not admitted
    assert r2.prefill_tokens == {"old": 100}
    assert r2.admitted == []
    assert s.waiting_ids() == ["new"]
    r3 = s.step()
    # old needs its last 50, new gets what is left
    assert r3.prefill_tokens == {"old": 50, "new": 50}
    assert r3.admitted == [("new", 0)]
    assert r3.num_scheduled_tokens == 100


def test_chunked_prefill_stays_running_across_passes() -> None:
    s = make(max_num_batched_tokens=100, block_size=4, num_gpu_blocks=1000)
    s.add_request("a", prompt(250), 3)
    r1 = s.step()
    r2 = s.step()
    assert r1.prefill_tokens == {"a": 100} and r1.emitted == []
    assert r2.prefill_tokens == {"a": 100} and r2.emitted == []
    assert s.running_ids() == ["a"]
    r3 = s.step()
    assert r3.prefill_tokens == {"a": 50}
    assert [rid for rid, _ in r3.emitted] == ["a"]


def test_without_chunked_prefill_a_prompt_larger_than_the_budget_blocks() -> None:
    s = make(max_num_batched_tokens=100, block_size=4, enable_chunked_prefill=False)
    s.add_request("small", prompt(60), 3)
    s.add_request("big", prompt(80, start=1000), 3)
    r1 = s.step()
    assert r1.prefill_tokens == {"small": 60}
    assert s.waiting_ids() == ["big"]
    r2 = s.step()  # small decodes (1 token) and big fits now: 1 + 80 <= 100
    assert r2.prefill_tokens == {"big": 80}


def test_two_ready_requests_decode_in_one_pass() -> None:
    s = make(block_size=4)
    s.add_request("a", prompt(10), 5)
    s.add_request("b", prompt(10, start=100), 5)
    s.step()
    r = s.step()
    assert [rid for rid, _ in r.emitted] == ["a", "b"]
    assert r.prefill_ms == 0.0 and r.decode_ms > 0.0
    assert r.num_scheduled_tokens == 2


@pytest.mark.parametrize(("mode", "victim", "survivor"), [("lifo", "new", "old"), ("fifo", "old", "new")])
def test_preemption_requeues_the_victim_at_the_front(mode: str, victim: str, survivor: str) -> None:
    # 6 blocks of 4 tokens: two 8-token prompts take 4 (+2 partial) — decoding soon needs a 7th block.
    s = make(block_size=4, num_gpu_blocks=6, preemption_mode=mode, max_num_batched_tokens=64)
    s.add_request("old", prompt(8), 40)
    s.add_request("new", prompt(8, start=500), 40)
    s.add_request("later", prompt(4, start=900), 1)
    preempted: list[str] = []
    for _ in range(30):
        r = s.step()
        if r.preempted:
            preempted = r.preempted
            assert r.admitted == []  # no admission in a pass that preempted
            break
    assert preempted == [victim]
    assert s.waiting_ids()[0] == victim
    assert s.running_ids() == [survivor]
    run_until_idle(s)


def test_identical_prompts_hit_the_prefix_cache() -> None:
    s = make(block_size=16)
    p = prompt(16 * 10 + 5)
    s.add_request("first", p, 2)
    run_until_idle(s)
    events = s.drain_kv_events()
    assert sum(len(e.event.data.blocks) for e in events if isinstance(e.event.data, KvStored)) == 10
    s.add_request("second", p, 2)
    r = s.step()
    assert r.admitted == [("second", 16 * 10)]
    assert r.prefill_tokens == {"second": 5}
    # reactivated blocks are not stored again
    assert not any(isinstance(e.event.data, KvStored) for e in s.drain_kv_events())


def test_fully_cached_prompt_still_recomputes_its_last_block() -> None:
    s = make(block_size=16)
    p = prompt(64)
    s.add_request("first", p, 1)
    run_until_idle(s)
    s.add_request("second", p, 1)
    r = s.step()
    assert r.admitted == [("second", 48)]
    assert r.prefill_tokens == {"second": 16}


def test_exactly_max_tokens_then_finished_and_blocks_released() -> None:
    s = make(block_size=4, num_gpu_blocks=64)
    s.add_request("a", prompt(10), 7)
    results = run_until_idle(s)
    tokens = [tok for r in results for rid, tok in r.emitted if rid == "a"]
    assert len(tokens) == 7
    assert all(1000 <= t < 2000 for t in tokens)
    assert [r.finished for r in results if r.finished] == [["a"]]
    assert results[-1].finished == ["a"]
    assert s.kv.num_active_blocks == 0
    assert "a" not in s


def test_cancel_frees_blocks_immediately() -> None:
    s = make(block_size=4)
    s.add_request("a", prompt(40), 100)
    s.add_request("b", prompt(8, start=500), 100)
    s.step()
    assert s.kv.num_active_blocks > 0
    assert s.cancel("a")
    assert s.kv.num_active_blocks == 2  # b: 2 full blocks; its sampled token is not computed yet
    assert s.cancel("b")
    assert s.kv.num_active_blocks == 0
    assert not s.cancel("b")
    s.add_request("c", prompt(4), 1)
    assert s.cancel("c")  # waiting request
    assert s.is_idle


def test_output_is_deterministic_under_a_seed() -> None:
    def tokens(seed: int) -> list[tuple[str, int]]:
        s = make(seed=seed, block_size=4)
        for i in range(3):
            s.add_request(str(i), prompt(9, start=i * 50), 6)
        return [t for r in run_until_idle(s) for t in r.emitted]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_reasoning_wraps_the_first_tokens_in_thinking_markers() -> None:
    s = make(reasoning=ReasoningConfig(7, 8, 0.5))
    s.add_request("a", prompt(5), 10)
    toks = [t for r in run_until_idle(s) for _, t in r.emitted]
    assert len(toks) == 10
    assert toks[0] == 7 and toks[4] == 8
    assert all(1000 <= t < 2000 for t in toks[1:4] + toks[5:])


def test_reasoning_token_counts() -> None:
    r = ReasoningConfig(1, 2, 0.3)
    assert r.num_thinking_tokens(1) == 0
    assert r.num_thinking_tokens(3) == 0  # floor(0.9) == 0
    assert r.num_thinking_tokens(5) == 2
    assert r.num_thinking_tokens(100) == 30
    assert ReasoningConfig(1, 2, 1.0).num_thinking_tokens(4) == 4


def test_invalid_requests_are_rejected() -> None:
    s = make(block_size=4, num_gpu_blocks=4)
    with pytest.raises(InvalidArgument):
        s.add_request("big", prompt(17), 1)
    with pytest.raises(InvalidArgument):
        s.add_request("zero", prompt(3), 0)
    with pytest.raises(InvalidArgument):
        s.add_request("empty", [], 3)
    s.add_request("ok", prompt(3), 1)
    with pytest.raises(InvalidArgument):
        s.add_request("ok", prompt(3), 1)


def test_sequence_outgrowing_the_cache_is_rejected_not_looped() -> None:
    s = make(block_size=4, num_gpu_blocks=3)
    s.add_request("a", prompt(8), 100)
    results = run_until_idle(s)
    assert any(r.rejected == ["a"] for r in results)
    assert sum(len(r.emitted) for r in results) < 100


def test_max_model_len_caps_output() -> None:
    s = make(max_model_len=12)
    s.add_request("a", prompt(10), 100)
    assert sum(len(r.emitted) for r in run_until_idle(s)) == 2


def test_max_num_seqs_limits_running() -> None:
    s = make(max_num_seqs=2, block_size=4)
    for i in range(4):
        s.add_request(str(i), prompt(4, start=10 * i), 3)
    r = s.step()
    assert [rid for rid, _ in r.admitted] == ["0", "1"]
    assert s.num_running == 2 and s.num_waiting == 2


def test_worker_types_zero_the_other_phase() -> None:
    p = make(worker_type="prefill", kv_bytes_per_token=1000, kv_transfer_bandwidth=1.0)
    p.add_request("a", prompt(100), 1)
    r = p.step()
    assert r.prefill_ms > 0 and r.decode_ms == 0.0 and r.finished == ["a"]
    assert r.handoff_delay_ms["a"] == pytest.approx(100 * 1000 / 1e9 * 1000)
    d = make(worker_type="decode")
    d.add_request("a", prompt(100), 2, transferred=True)
    r = d.step()
    assert r.prefill_ms == 0.0 and r.decode_ms > 0 and r.emitted[0][0] == "a"


def test_transferred_prompt_lands_in_the_kv_cache_without_prefill_time() -> None:
    s = make(worker_type="decode", block_size=16)
    events: list = []
    s.add_request("remote", prompt(100), 3, transferred=True)
    r = s.step()
    events += s.drain_kv_events()
    # The prompt's 6 full blocks are now held (and announced) here, and the first token came at once.
    stored = sum(len(e.event.data.blocks) for e in events if type(e.event.data).__name__ == "KvStored")
    assert stored == 100 // 16 and r.prefill_ms == 0.0 and [rid for rid, _ in r.emitted] == ["remote"]
    assert r.admitted == [("remote", 0)]  # no cache hit of its own: the prompt arrived


def test_decode_worker_computes_a_local_prefill() -> None:
    s = make(worker_type="decode")
    s.add_request("local", prompt(300), 2)
    r = s.step()
    assert r.prefill_ms > 0  # conditional disaggregation: the prompt is computed here, and paid for


def test_speedup_ratios_scale_the_pass_duration() -> None:
    base = make()
    fast = make(speedup_ratio=4.0, decode_speedup_ratio=2.0)
    for s in (base, fast):
        s.add_request("a", prompt(300), 3)
    b, f = base.step(), fast.step()
    assert f.prefill_ms == b.prefill_ms and f.decode_ms == b.decode_ms
    assert f.duration_ms == pytest.approx(b.prefill_ms / 4.0 + b.decode_ms / 8.0)
    assert b.duration_ms == pytest.approx(b.prefill_ms + b.decode_ms)


# ------------------------------------------------------------------- property: events vs brute force


class BruteForceIndex:
    """Per-worker set of cached block hashes, applying events with parent validation (no cascading)."""

    def __init__(self) -> None:
        self.blocks: set[int] = set()
        self.last_event_id = -1

    def apply(self, ev: RouterEvent) -> None:
        assert ev.event.event_id == self.last_event_id + 1, "event ids must be consecutive"
        self.last_event_id = ev.event.event_id
        data = ev.event.data
        if isinstance(data, KvStored):
            parent = data.parent_hash
            assert parent is None or parent in self.blocks, "stored block with unknown parent"
            for b in data.blocks:
                assert b.block_hash not in self.blocks, "block stored twice"
                self.blocks.add(b.block_hash)
        elif isinstance(data, KvRemoved):
            for h in data.block_hashes:
                assert h in self.blocks, "removal of an unknown block"
                self.blocks.discard(h)
        else:
            self.blocks.clear()


def check_refcounts(s: Scheduler) -> None:
    expected: dict[int, int] = {}
    for req in s._running:
        for b in req.seq.blocks:
            expected[b] = expected.get(b, 0) + 1
    for req in s._waiting:
        assert req.seq.blocks == []
    assert s.kv.active == expected
    assert s.kv.num_active_blocks + s.kv.num_inactive_blocks <= s.args.num_gpu_blocks
    assert not (set(s.kv.active) & set(s.kv.inactive))


op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 6)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, min_size=4, max_size=40),
    mode=st.sampled_from(["lifo", "fifo"]),
    chunked=st.booleans(),
    capacity=st.integers(8, 24),
    budget=st.integers(4, 48),
)
def test_event_stream_matches_a_brute_force_index(
    ops: list[tuple], mode: str, chunked: bool, capacity: int, budget: int
) -> None:
    bs = 4
    events: list[RouterEvent] = []
    s = Scheduler(
        MockEngineArgs(
            num_gpu_blocks=capacity,
            block_size=bs,
            max_num_batched_tokens=budget,
            max_num_seqs=5,
            preemption_mode=mode,
            enable_chunked_prefill=chunked,
            seed=3,
        ),
        event_sink=events.append,
    )
    index = BruteForceIndex()
    # Prompts share prefixes (one of four roots) so prefix hits, merges and evictions all happen.
    roots = [prompt(40, start=1000 * r) for r in range(4)]
    counter = 0
    live: list[str] = []
    emitted: dict[str, int] = {}
    limits: dict[str, int] = {}
    gone: set[str] = set()

    def do_step() -> None:
        r = s.step()
        for ev in events:
            index.apply(ev)
        events.clear()
        assert index.blocks == s.kv.cached_block_hashes()
        check_refcounts(s)
        assert r.num_scheduled_tokens <= budget
        assert s.num_running <= 5
        for rid, _ in r.emitted:
            emitted[rid] = emitted.get(rid, 0) + 1
        for rid in r.finished:
            assert emitted[rid] == limits[rid]
            gone.add(rid)
        for rid in r.rejected:
            gone.add(rid)
        for rid in set(r.finished) | set(r.rejected):
            live.remove(rid)

    for o in ops:
        if o[0] == "add":
            _, root, length, max_tokens = o
            rid = f"r{counter}"
            counter += 1
            toks = roots[root][:length] + [7] * (counter % 3)
            try:
                s.add_request(rid, toks, max_tokens)
            except InvalidArgument:
                continue
            live.append(rid)
            limits[rid] = max_tokens
        elif o[0] == "cancel":
            if live:
                rid = live[o[1] % len(live)]
                assert s.cancel(rid)
                live.remove(rid)
                gone.add(rid)
                for ev in events:
                    index.apply(ev)
                events.clear()
                assert index.blocks == s.kv.cached_block_hashes()
                check_refcounts(s)
        else:
            for _ in range(o[1]):
                do_step()
    guard = 0
    while not s.is_idle:
        do_step()
        guard += 1
        assert guard < 5000
    assert s.kv.num_active_blocks == 0


@pytest.mark.parametrize("mode", ["lifo", "fifo"])
def test_long_random_workload_keeps_index_consistent(mode: str) -> None:
    rng = random.Random(11)
    events: list[RouterEvent] = []
    s = Scheduler(
        MockEngineArgs(num_gpu_blocks=40, block_size=4, max_num_batched_tokens=32, max_num_seqs=8,
                       preemption_mode=mode, seed=5),
        event_sink=events.append,
    )
    index = BruteForceIndex()
    roots = [prompt(80, start=1000 * r) for r in range(6)]
    preemptions = evictions = 0
    for i in range(1500):
        if rng.random() < 0.3 and s.num_waiting < 6:
            s.add_request(f"r{i}", roots[rng.randrange(6)][: rng.randrange(1, 80)], rng.randrange(1, 60))
        if rng.random() < 0.03 and s.running_ids():
            s.cancel(rng.choice(s.running_ids()))
        r = s.step()
        preemptions += len(r.preempted)
        for ev in events:
            evictions += isinstance(ev.event.data, KvRemoved)
            index.apply(ev)
        events.clear()
        assert index.blocks == s.kv.cached_block_hashes()
        check_refcounts(s)
    assert preemptions > 0 and evictions > 0


# -------------------------------------------------------------------------------------------- timing


def test_single_prompt_ttft_matches_the_polynomial_formula() -> None:
    args = MockEngineArgs(seed=1)
    s = Scheduler(args)
    isl = 4096
    s.add_request("a", prompt(isl), 2)
    ttft = 0.0
    while True:
        r = s.step()
        ttft += r.duration_ms
        if r.emitted:
            break
    prefill = 4.209989e-7 * isl**2 + 1.518344e-2 * isl + 16.50142
    # The first token comes out of the prefill pass itself: no decode step is charged for it.
    assert ttft == pytest.approx(prefill, rel=1e-9)
    r = s.step()  # the second token is a real decode step
    u = (-(-(isl + 1) // args.block_size)) * args.block_size / (args.num_gpu_blocks * args.block_size)
    assert r.prefill_ms == 0.0 and r.decode_ms == pytest.approx(-25.74 * u * u + 54.01 * u + 5.74, rel=1e-9)


def test_long_prompt_is_prefilled_in_budget_sized_chunks() -> None:
    s = make()
    s.add_request("a", prompt(10_000), 1)
    r1, r2 = s.step(), s.step()
    assert r1.prefill_tokens == {"a": 8192} and r2.prefill_tokens == {"a": 10_000 - 8192}
    # second chunk: T = isl − prefix of that chunk
    t = 10_000 - 8192
    assert r2.prefill_ms == pytest.approx(4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142)
    assert r2.finished == ["a"]


# ---------------------------------------------------------------------------------------------- args


def test_engine_args_defaults_follow_the_reference() -> None:
    a = MockEngineArgs()
    assert (a.num_gpu_blocks, a.block_size, a.max_num_seqs, a.max_num_batched_tokens) == (16384, 64, 256, 8192)
    assert a.enable_prefix_caching and a.enable_chunked_prefill
    assert a.preemption_mode == "lifo"
    assert (a.speedup_ratio, a.decode_speedup_ratio, a.dp_size) == (1.0, 1.0, 1)
    assert a.kv_transfer_bandwidth == 64.0 and a.kv_cache_dtype == "auto"
    assert a.worker_type == "aggregated" and a.engine_type == "vllm"
    a.validate()


def test_extra_engine_args_json_overrides_base(tmp_path: Path) -> None:
    path = tmp_path / "args.json"
    path.write_text(
        json.dumps(
            {
                "speedup_ratio": 10.0,
                "num_gpu_blocks": 128,
                "is_prefill": True,
                "reasoning": {"start_thinking_token_id": 1, "end_thinking_token_id": 2, "thinking_ratio": 0.5},
            }
        )
    )
    base = MockEngineArgs(block_size=16, speedup_ratio=2.0)
    a = MockEngineArgs.from_json(path, base)
    assert a.speedup_ratio == 10.0 and a.num_gpu_blocks == 128 and a.block_size == 16
    assert a.worker_type == "prefill" and a.is_prefill
    assert a.reasoning == ReasoningConfig(1, 2, 0.5)
    assert {"speedup_ratio", "num_gpu_blocks", "worker_type", "reasoning"} <= a.explicitly_set


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"block_size": 0}, "block_size"),
        ({"speedup_ratio": 0}, "speedup_ratio"),
        ({"preemption_mode": "random"}, "preemption_mode"),
        ({"watermark": 1.5}, "watermark"),
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching"),
        ({"no_such_flag": 1}, "no_such_flag"),
        ({"reasoning": {"start_thinking_token_id": 1}}, "reasoning"),
        ({"reasoning": {"start_thinking_token_id": 1, "end_thinking_token_id": 2, "thinking_ratio": 2}}, "thinking_ratio"),
        ({"planner_profile_data": "/definitely/not/here.npz"}, "planner_profile_data"),
        ({"engine_type": "sglang"}, "sglang"),
        ({"disaggregation_mode": "both"}, "disaggregation_mode"),
    ],
)
def test_invalid_engine_args_raise_config_error(obj: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MockEngineArgs.from_dict(obj)


def test_extra_engine_args_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra-engine-args"):
        MockEngineArgs.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        MockEngineArgs.from_json(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        MockEngineArgs.from_json(arr)


def test_router_hashes_match_scheduler_events() -> None:
    events: list[RouterEvent] = []
    s = Scheduler(MockEngineArgs(block_size=8, seed=0), event_sink=events.append)
    toks = prompt(30)
    s.add_request("a", toks, 1)
    s.step()
    hashes = [b.block_hash for e in events if isinstance(e.event.data, KvStored) for b in e.event.data.blocks]
    assert hashes == compute_seq_hashes(compute_block_hashes(toks, 8))
