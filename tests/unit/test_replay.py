"""Trace replay in simulated time (dynamo.replay): hand-computed schedules, determinism, decode spans."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.scheduler import Scheduler
from dynamo.replay.report import describe, percentile, summarize
from dynamo.replay.simulation import ReplaySimulation
from dynamo.replay.workload import PromptBuilder, TraceRequest, parse_mooncake, synthetic
from dynamo.runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit

BS = 64
TOTAL_KV_TOKENS = 16384 * BS


def prefill_ms(new_tokens: int) -> float:
    """Reference §3.3 polynomial, batch of one."""
    t = new_tokens
    return 4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142


def decode_ms(active_blocks: int) -> float:
    u = active_blocks * BS / TOTAL_KV_TOKENS
    return max(-25.74 * u * u + 54.01 * u + 5.74, 1.0)


def records(sim_result):
    return [dataclasses.astuple(r) for r in sim_result.records]


# -------------------------------------------------------------------------------------- workload

def test_parse_mooncake_accepts_both_field_spellings():
    reqs = parse_mooncake([
        {"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": [1]},
        {"created_time": 7, "input_tokens": 20, "output_tokens": 3, "hash_ids": [1, 2], "session_id": 9,
         "delay_ms": 50},
    ])
    assert reqs[0] == TraceRequest(5.0, 10, 2, (1,))
    assert reqs[1] == TraceRequest(7.0, 20, 3, (1, 2), "9", 50.0)


@pytest.mark.parametrize("line, message", [
    ({"output_length": 2}, "missing input_length"),
    ({"input_length": 4}, "missing output_length"),
    ({"input_length": 0, "output_length": 1}, ">= 1"),
    ({"input_length": "x", "output_length": 1}, "trace line 1"),
])
def test_parse_mooncake_rejects_bad_lines_clearly(line, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_mooncake([line])


def test_prompt_hashes_equal_the_routers_hashes_of_the_real_tokens():
    builder = PromptBuilder(trace_block_size=128, block_size=BS)
    req = TraceRequest(0.0, 300, 1, (7, 8, 9))
    tokens, (local, seq) = builder.build(req)
    assert len(tokens) == 300
    real = [*range(7 * 128, 8 * 128), *range(8 * 128, 9 * 128), *range(9 * 128, 9 * 128 + 44)]
    assert tokens[256:] == real[256:]  # the partial tail block carries real ids
    assert local == compute_block_hashes(real, BS)
    assert seq == compute_seq_hashes(local)
    # A second prompt sharing the first id shares exactly its blocks' hashes (and hits the memo).
    _, (_, seq2) = builder.build(TraceRequest(0.0, 256, 1, (7, 10)))
    assert seq2[:2] == seq[:2] and seq2[2] != seq[2]


def test_prompt_longer_than_its_hash_ids_gets_private_blocks():
    builder = PromptBuilder(trace_block_size=64, block_size=BS)
    _, (_, a) = builder.build(TraceRequest(0.0, 256, 1, (1,)))
    _, (_, b) = builder.build(TraceRequest(0.0, 256, 1, (1,)))
    assert len(a) == len(b) == 4
    assert a[0] == b[0] and not set(a[1:]) & set(b[1:])


def test_synthetic_groups_share_prefixes():
    reqs = synthetic(1024, 4, 4, shared_prefix_ratio=0.5, num_prefix_groups=2, block_size=128, arrival_interval_ms=10)
    assert [r.arrival_ms for r in reqs] == [0.0, 10.0, 20.0, 30.0]
    assert reqs[0].hash_ids[:4] == reqs[2].hash_ids[:4] != reqs[1].hash_ids[:4]
    assert not set(reqs[0].hash_ids[4:]) & set(reqs[2].hash_ids[4:])


# -------------------------------------------------------------------------------------- schedules

def test_tiny_trace_replays_the_hand_computed_schedule():
    trace = [TraceRequest(0.0, 128, 3, (0, 1)), TraceRequest(1000.0, 128, 2, (0, 2))]
    sim = ReplaySimulation(trace, num_workers=1, trace_block_size=BS)
    res = sim.run()
    r1, r2 = res.records
    # Request 1: one pass prefills 128 tokens (2 blocks) and emits token 1 (no decode step is charged for
    # a token sampled from the prefill itself); token 2 needs a third block.
    t1 = prefill_ms(128)
    t2 = t1 + decode_ms(3)
    t3 = t2 + decode_ms(3)
    assert r1.first_token_ms == pytest.approx(t1)
    assert r1.second_token_ms == pytest.approx(t2)
    assert r1.last_token_ms == pytest.approx(t3)
    assert (r1.reused_tokens, r1.tokens, r1.status) == (0, 3, "completed")
    # Request 2 shares hash id 0: one cached block (64 tokens) of its prompt, 64 to compute.
    assert r2.reused_tokens == 64
    assert r2.first_token_ms == pytest.approx(1000.0 + prefill_ms(64))
    assert r2.last_token_ms == pytest.approx(r2.first_token_ms + decode_ms(3))
    assert list(res.itl_ms) == pytest.approx([t2 - t1, t3 - t2, decode_ms(3)])
    assert res.duration_ms == pytest.approx(r2.last_token_ms)
    s = summarize(res, 0.0)
    assert s["prefix_cache_reused_ratio"] == pytest.approx(64 / 256)
    assert s["mean_ttft_ms"] == pytest.approx((t1 + r2.first_token_ms - 1000.0) / 2)


def test_simultaneous_arrivals_share_the_first_pass():
    trace = [TraceRequest(0.0, 128, 2, (1, 2)), TraceRequest(0.0, 128, 2, (3, 4))]
    res = ReplaySimulation(trace, num_workers=1, trace_block_size=BS).run()
    a, b = res.records
    # One pass prefills both prompts (T = batch 2 x 128 new tokens) and both first tokens come out of it.
    assert a.first_token_ms == b.first_token_ms == pytest.approx(prefill_ms(256))


def test_kv_router_sends_the_shared_prefix_to_the_worker_that_holds_it():
    # Worker 0 gets request 0 (round robin would send request 1 to worker 1); the KV router must
    # follow the cached prefix instead.
    trace = [TraceRequest(0.0, 1024, 2, (0, 1)), TraceRequest(500.0, 1024, 2, (0, 1))]
    res = ReplaySimulation(trace, num_workers=2, router_mode="kv_router", trace_block_size=512).run()
    a, b = res.records
    assert a.worker == b.worker
    assert b.predicted_cached_tokens == b.best_cached_tokens == 1024
    assert b.reused_tokens == 1024 - BS  # last block recomputed
    rr = ReplaySimulation(trace, num_workers=2, router_mode="round_robin", trace_block_size=512).run()
    assert rr.records[0].worker != rr.records[1].worker and rr.records[1].reused_tokens == 0


def _mixed_workload() -> list[TraceRequest]:
    return synthetic(1500, 40, 120, request_rate=25.0, shared_prefix_ratio=0.6, num_prefix_groups=5,
                     block_size=256, seed=3)


@pytest.mark.parametrize("mode", ["round_robin", "kv_router"])
def test_replay_is_deterministic_under_a_seed(mode):
    def once(seed):
        return ReplaySimulation(_mixed_workload(), num_workers=3, router_mode=mode, trace_block_size=256,
                                seed=seed).run()

    a, b = once(1), once(1)
    assert records(a) == records(b) and list(a.itl_ms) == list(b.itl_ms)
    assert all(r.status == "completed" for r in a.records)


@pytest.mark.parametrize("concurrency, blocks, preempts", [(None, 60, True), (4, 40, False), (None, 16384, False)])
def test_decode_spans_change_nothing(concurrency, blocks, preempts):
    """The decode fast path must give exactly the pass-by-pass replay (times, tokens, ITLs)."""
    args = MockEngineArgs(num_gpu_blocks=blocks)  # small caches: evictions, waiting and preemptions too
    kw = dict(engine_args=args, num_workers=3, router_mode="kv_router", trace_block_size=256,
              replay_concurrency=concurrency, seed=5)
    fast = ReplaySimulation(_mixed_workload(), fast_forward=True, **kw).run()
    slow = ReplaySimulation(_mixed_workload(), fast_forward=False, **kw).run()
    assert records(fast) == records(slow)
    assert sorted(fast.itl_ms) == sorted(slow.itl_ms)  # spans book their gaps ahead of the clock
    assert fast.num_passes == slow.num_passes
    assert (slow.num_preemptions > 0) == preempts


def test_closed_loop_keeps_the_concurrency():
    trace = [TraceRequest(float(i), 256, 5, (i,)) for i in range(6)]
    res = ReplaySimulation(trace, num_workers=2, replay_concurrency=1, trace_block_size=256).run()
    recs = res.records
    for prev, nxt in itertools.pairwise(recs):
        assert nxt.arrival_ms == pytest.approx(prev.last_token_ms)


def test_session_turn_arrives_after_the_previous_turn_plus_delay():
    trace = parse_mooncake([
        {"timestamp": 0, "input_length": 128, "output_length": 4, "hash_ids": [1, 2], "session_id": "s"},
        {"timestamp": 0, "input_length": 256, "output_length": 2, "hash_ids": [1, 2, 3, 4], "session_id": "s",
         "delay": 250},
    ])
    res = ReplaySimulation(trace, num_workers=1, trace_block_size=BS).run()
    first, second = res.records
    assert second.arrival_ms == pytest.approx(first.last_token_ms + 250.0)
    assert second.reused_tokens == 128


def test_a_prompt_larger_than_the_cache_is_rejected_not_raised():
    args = MockEngineArgs(num_gpu_blocks=4)
    trace = [TraceRequest(0.0, 1024, 2, (1, 2)), TraceRequest(1.0, 128, 2, (3,))]
    res = ReplaySimulation(trace, engine_args=args, num_workers=1, trace_block_size=512).run()
    assert [r.status for r in res.records] == ["rejected", "completed"]


def test_bad_simulation_options_are_invalid_arguments():
    with pytest.raises(InvalidArgument):
        ReplaySimulation([], num_workers=0)
    with pytest.raises(InvalidArgument):
        ReplaySimulation([], router_mode="nope")
    with pytest.raises(InvalidArgument):
        ReplaySimulation([], arrival_speedup_ratio=0)


# -------------------------------------------------------------------------------------- pieces

def test_decode_span_matches_single_steps():
    args = MockEngineArgs(seed=11)
    a, b = Scheduler(args), Scheduler(args)
    for s in (a, b):
        s.add_request("x", list(range(100)), 50)
        s.add_request("y", list(range(500, 700)), 40)
        s.step()  # prefill both
    spans = a.step_decode_span(1e9)
    assert 0 < len(spans) < 50
    singles = [b.step().duration_ms for _ in spans]
    assert spans == singles
    assert a.kv.active == b.kv.active
    assert [r.tokens for r in a._running] == [r.tokens for r in b._running]


def test_decode_span_through_block_fills_and_the_finishing_pass_matches_single_steps():
    args = MockEngineArgs(seed=3, block_size=16)
    a, b = Scheduler(args), Scheduler(args)
    for s in (a, b):
        s.add_request("x", list(range(40)), 70)  # fills and opens several 16-token blocks
        s.add_request("y", list(range(500, 530)), 90)
        s.step()
    finished: list[str] = []
    spans = a.step_decode_span(1e9, finished_out=finished)
    assert len(spans) == 69 and finished == ["x"]  # up to and including x's last token
    singles = []
    for _ in spans:
        res = b.step()
        singles.append(res.duration_ms)
    assert spans == singles and res.finished == ["x"]
    assert a.kv.active == b.kv.active and list(a.kv.inactive) == list(b.kv.inactive)
    events = a.drain_kv_events()
    assert len(events) > 4 and events == b.drain_kv_events()  # the filled blocks' stored events, in order
    assert a.running_ids() == b.running_ids() == ["y"] and "x" not in a
    assert [r.tokens for r in a._running] == [r.tokens for r in b._running]


def test_decode_span_stops_at_the_horizon_and_refuses_prefill():
    s = Scheduler(MockEngineArgs(seed=1))
    s.add_request("x", list(range(10)), 30)
    assert s.step_decode_span(1e9) == []  # still waiting: the next pass must admit it
    s.step()
    spans = s.step_decode_span(1e-9)
    assert len(spans) == 1  # the first pass always starts before the horizon


def test_percentiles_match_numpy_linear_interpolation():
    vals = [1.0, 2.0, 4.0, 8.0]
    assert percentile(vals, 50) == 3.0
    assert percentile(vals, 90) == pytest.approx(6.8)
    d = describe([2.0, 4.0])
    assert (d["mean"], d["std"], d["min"], d["max"]) == (3.0, 1.0, 2.0, 4.0)


@pytest.mark.parametrize("mode", ["round_robin", "kv_router"])
def test_a_replay_creates_no_reference_cycles(mode):
    """The CLI runs the replay with the cycle collector off: that must leak nothing."""
    import gc

    sim = ReplaySimulation(_mixed_workload(), engine_args=MockEngineArgs(num_gpu_blocks=60), num_workers=3,
                           router_mode=mode, trace_block_size=256, seed=5)
    gc.collect()
    gc.disable()
    try:
        res = sim.run()
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert all(r.status == "completed" for r in res.records)
