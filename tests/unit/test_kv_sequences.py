"""Active sequence tracking (reference §2.5): dedup, prefill tokens, lifecycle, expiry, output blocks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.kv_router.sequences import ActiveSequences, ActiveSequencesMultiWorker

pytestmark = pytest.mark.unit

A = (1, 0)
B = (2, 0)


def multi(**kw: object) -> ActiveSequencesMultiWorker:
    seqs = ActiveSequencesMultiWorker(16, rng=random.Random(0), **kw)  # type: ignore[arg-type]
    seqs.update_workers([A, B])
    return seqs


def test_shared_prefix_blocks_count_once() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2, 3], isl=48, overlap=0)
    seqs.add_request("r2", A, [1, 2, 4, 5], isl=64, overlap=0)
    assert seqs.active_blocks()[A] == 5
    seqs.free("r1")
    assert seqs.active_blocks()[A] == 4  # 1 and 2 still referenced by r2
    seqs.free("r2")
    assert seqs.active_blocks() == {A: 0, B: 0}


def test_no_kv_reuse_means_no_dedup() -> None:
    seqs = multi(assume_kv_reuse=False)
    seqs.add_request("r1", A, [1, 2, 3], isl=48, overlap=0)
    seqs.add_request("r2", A, [1, 2, 3], isl=48, overlap=0)
    assert seqs.active_blocks()[A] == 6
    _, decode = seqs.potential_loads([1, 2, 3], 48, {})
    assert decode[A] == 9
    # ...and the per-request override works the other way round too.
    seqs2 = multi()
    seqs2.add_request("r1", A, [1, 2, 3], isl=48, overlap=0, assume_kv_reuse=False)
    assert seqs2.new_blocks_if_added(A, [1, 2, 3]) == 3


def test_prefill_tokens_lifecycle() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2, 3, 4], isl=70, overlap=2)
    assert seqs.active_prefill_tokens()[A] == 70 - 2 * 16
    seqs.add_request("r2", A, [9], isl=20, overlap=0)
    assert seqs.active_prefill_tokens()[A] == 38 + 20
    assert seqs.mark_prefill_completed("r1")
    assert not seqs.mark_prefill_completed("r1")
    assert seqs.active_prefill_tokens()[A] == 20
    assert seqs.active_blocks()[A] == 5  # decode load stays until free
    assert seqs.free("r2")
    assert seqs.active_prefill_tokens()[A] == 0
    assert not seqs.free("r2")
    assert seqs.free("r1")
    assert len(seqs) == 0


def test_full_overlap_books_no_prefill() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2], isl=32, overlap=2)
    assert seqs.active_prefill_tokens()[A] == 0
    seqs.add_request("r2", B, [1, 2], isl=32, overlap=0, track_prefill_tokens=False)
    assert seqs.active_prefill_tokens()[B] == 0


def test_potential_loads() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2, 3], isl=48, overlap=0)  # 48 prefill tokens, 3 blocks
    prefill, decode = seqs.potential_loads([1, 2, 7, 8], 64, {A: 2})
    assert prefill == {A: 48 + (64 - 32), B: 64}
    assert decode == {A: 3 + 2, B: 4}
    assert seqs.new_blocks_if_added(A, [1, 2, 7, 8]) == 2
    assert seqs.new_blocks_if_added((9, 0), [1, 2]) == 2  # unknown worker: everything is new
    loads = {(p.worker_id, p.dp_rank): p for p in seqs.get_potential_loads([1], 16, {})}
    assert loads[A].potential_decode_blocks == 3
    assert loads[A].potential_prefill_tokens == 48 + 16
    active = {(m.worker_id, m.dp_rank): m for m in seqs.loads()}
    assert active[A].active_decode_blocks == 3 and active[A].active_prefill_tokens == 48


def test_prefix_beyond_first_missing_block_is_new() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2, 3], isl=48, overlap=0)
    # Block 3 is active, but the walk stops at the first missing block (2 is absent here).
    assert seqs.new_blocks_if_added(A, [1, 9, 3]) == 2


def test_track_active_blocks_off_means_zero_decode_load() -> None:
    seqs = multi(track_active_blocks=False)
    seqs.add_request("r1", A, [1, 2, 3], isl=48, overlap=0)
    assert seqs.active_blocks()[A] == 0
    _, decode = seqs.potential_loads([1, 2, 3], 48, {})
    assert decode == {A: 0, B: 0}
    assert seqs.active_prefill_tokens()[A] == 48


def test_stale_requests_expire_after_300s() -> None:
    seqs = multi()
    seqs.add_request("old", A, [1], isl=16, overlap=0, now=0.0)
    assert seqs.add_request("r2", A, [2], isl=16, overlap=0, now=299.0) == []
    # The sweep runs at most every 30 s: at 310 s the last sweep (299 s) is too recent.
    assert seqs.add_request("r3", A, [3], isl=16, overlap=0, now=310.0) == []
    expired = seqs.add_request("r4", A, [4], isl=16, overlap=0, now=330.0)
    assert expired == ["old"]
    assert seqs.worker_of("old") is None
    assert seqs.active_blocks()[A] == 3
    assert not seqs.free("old")


def test_output_blocks_grow_and_decay() -> None:
    seqs = multi(track_output_blocks=True)
    # isl 40 → ceil(40/16) = 3 block slots already; 2 full prompt blocks are hashed.
    seqs.add_request("r1", A, [1, 2], isl=40, overlap=0, expected_output_tokens=100)
    assert seqs.active_blocks()[A] == 2
    seqs.add_output_tokens("r1", 8)  # 48 tokens: still 3 slots
    assert seqs.active_blocks()[A] == round(2 - 2 * 0.08)
    seqs.add_output_tokens("r1", 50)  # 90 tokens: 6 slots → 3 new blocks; half the output done
    assert seqs.active_blocks()[A] == round(5 - 5 * 0.5 + 1e-9)
    seqs.add_request("r2", A, [1, 2], isl=32, overlap=2)  # shares the prompt: those no longer decay
    assert seqs.active_blocks()[A] == int(5 - 3 * 0.5 + 0.5)
    seqs.add_output_tokens("r1", 100)
    assert seqs.active_blocks()[A] == 2
    seqs.free("r1")
    assert seqs.active_blocks()[A] == 2


def test_output_blocks_without_osl_do_not_decay() -> None:
    seqs = multi(track_output_blocks=True)
    seqs.add_request("r1", A, [1], isl=16, overlap=0)
    seqs.add_output_tokens("r1", 33)  # 49 tokens → 4 slots, 3 new blocks
    assert seqs.active_blocks()[A] == 4


def test_readding_a_request_id_replaces_it() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1, 2], isl=32, overlap=0)
    seqs.add_request("r1", B, [1], isl=16, overlap=0)
    assert seqs.active_blocks() == {A: 0, B: 1}
    assert seqs.active_prefill_tokens() == {A: 0, B: 16}


def test_removing_a_worker_drops_its_requests() -> None:
    seqs = multi()
    seqs.add_request("r1", A, [1], isl=16, overlap=0)
    seqs.remove_worker(1)
    assert seqs.workers() == [B]
    assert seqs.worker_of("r1") is None
    assert not seqs.free("r1")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "prefill", "free"]),
            st.integers(0, 7),
            st.lists(st.integers(0, 5), max_size=4),
            st.integers(0, 3),
        ),
        max_size=40,
    )
)
def test_loads_match_a_recount(ops: list[tuple[str, int, list[int], int]]) -> None:
    """Active blocks = unique blocks of live requests; prefill = sum over requests still prefilling."""
    seqs = ActiveSequences(16)
    live: dict[str, tuple[list[int], int]] = {}
    prefilling: set[str] = set()
    for op, rid_n, prefix, overlap in ops:
        rid = f"r{rid_n}"
        if op == "add":
            blocks = list(dict.fromkeys(prefix))
            isl = 16 * len(blocks) + 5
            seqs.add_request(rid, blocks, isl, isl - overlap * 16)
            live[rid] = (blocks, isl - overlap * 16)
            prefilling.discard(rid)  # re-adding an id replaces the old request
            if isl - overlap * 16 > 0:  # nothing to prefill → nothing tracked
                prefilling.add(rid)
        elif op == "prefill":
            assert seqs.mark_prefill_completed(rid) == (rid in prefilling)
            prefilling.discard(rid)
        else:
            assert seqs.free(rid) == (rid in live)
            live.pop(rid, None)
            prefilling.discard(rid)
        assert seqs.active_blocks == len({b for blocks, _ in live.values() for b in blocks})
        assert seqs.active_prefill_tokens == sum(max(0, live[r][1]) for r in prefilling)
