"""Fleet-scale decisions (``load_vectors`` + ``select_loads``) equal the per-worker scalar path exactly.

A random history of bookings, prefill completions, output tokens, frees, stale expiry and workers
joining/leaving drives one :class:`ActiveSequencesMultiWorker`; after every step the vectorised
projection must equal ``potential_loads`` for every worker, and ``select_loads`` must make the same
choice (same random draws) and explain the same candidates as ``select``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.kv_router.indexer import OverlapScores
from dynamo.kv_router.selector import WorkerSelector
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker

pytestmark = pytest.mark.unit

BS = 4
KEYS = [(w // 2, w % 2) for w in range(10)]

op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), st.sampled_from(KEYS),
              st.lists(st.integers(0, 6), max_size=5), st.integers(0, 3), st.sampled_from([None, 4, 9]),
              st.floats(0, 400)),
    st.tuples(st.just("prefill"), st.integers(0, 3)),
    st.tuples(st.just("output"), st.integers(0, 3), st.integers(0, 12)),
    st.tuples(st.just("free"), st.integers(0, 3)),
    st.tuples(st.just("join"), st.sampled_from(KEYS)),
    st.tuples(st.just("leave"), st.integers(0, 4)),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op, max_size=30),
    queries=st.lists(st.tuples(st.lists(st.integers(0, 6), max_size=5), st.integers(0, 30),
                               st.dictionaries(st.sampled_from(KEYS), st.integers(1, 4), max_size=3)),
                     min_size=1, max_size=3),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    weight=st.sampled_from([0.0, 1.0, 2.5]),
    temperature=st.sampled_from([0.0, 0.0, 0.7]),
    seed=st.integers(0, 99),
    first_query=st.integers(0, 20),
)
def test_vectorised_decisions_equal_the_scalar_path(ops, queries, flags, weight, temperature, seed,
                                                     first_query) -> None:
    track_blocks, track_output, reuse, track_prefill = flags
    seqs = ActiveSequencesMultiWorker(BS, track_active_blocks=track_blocks, track_output_blocks=track_output,
                                      assume_kv_reuse=reuse, track_prefill_tokens=track_prefill,
                                      rng=random.Random(seed))
    for key in KEYS[:6]:
        seqs.add_worker(key)
    for n, step in enumerate(ops):
        kind = step[0]
        if kind == "add":
            _, rid, key, blocks, overlap, osl, now = step
            seqs.add_request(f"r{rid}", key, blocks, BS * len(blocks) + 1, overlap, osl, now=now)
        elif kind == "prefill":
            seqs.mark_prefill_completed(f"r{step[1]}")
        elif kind == "output":
            seqs.add_output_tokens(f"r{step[1]}", step[2])
        elif kind == "free":
            seqs.free(f"r{step[1]}")
        elif kind == "join":
            seqs.add_worker(step[1])
        else:
            seqs.remove_worker(step[1])
        if n < first_query:  # the vectors start late: built from the bookings made so far
            continue
        candidates = seqs.workers()
        for blocks, isl, scores in queries:
            scores = {k: v for k, v in scores.items() if k in candidates}
            seq = blocks or None
            prefill, decode = seqs.potential_loads(seq, isl, scores)
            vec = seqs.load_vectors(seq, isl, scores)
            assert vec.as_dicts() == (prefill, decode)
            if not candidates:
                continue
            overlaps = OverlapScores(scores, {k: (k[0] * 7 + k[1]) % 3 for k in candidates})
            want = WorkerSelector(random.Random(seed), top_k=3).select(
                candidates, isl, BS, overlaps, prefill, decode, overlap_score_weight=weight,
                temperature=temperature, track_prefill_tokens=track_prefill)
            got = WorkerSelector(random.Random(seed), top_k=3).select_loads(
                candidates, isl, BS, overlaps, vec, overlap_score_weight=weight, temperature=temperature,
                track_prefill_tokens=track_prefill)
            assert got == want


def test_an_unknown_candidate_falls_back_to_the_scalar_defaults() -> None:
    seqs = ActiveSequencesMultiWorker(BS, rng=random.Random(0))
    seqs.add_worker((1, 0))
    seqs.add_request("a", (1, 0), [1, 2, 3], 12, 0)
    candidates = [(1, 0), (2, 0)]
    overlaps = OverlapScores({}, {})
    prefill, decode = seqs.potential_loads([5], 4, {})
    want = WorkerSelector(random.Random(1)).select(candidates, 4, BS, overlaps, prefill, decode)
    got = WorkerSelector(random.Random(1)).select_loads(candidates, 4, BS, overlaps,
                                                        seqs.load_vectors([5], 4, {}))
    assert got == want and got.worker == (2, 0)


def test_holder_index_forgets_freed_and_removed_workers() -> None:
    seqs = ActiveSequencesMultiWorker(BS, rng=random.Random(0))
    seqs.add_request("a", (1, 0), [7, 8], 8, 0)
    seqs.load_vectors([7], 4, {})
    seqs.add_request("b", (2, 0), [7, 9], 8, 0)
    assert seqs._holders == {7: 0b11, 8: 0b01, 9: 0b10}
    seqs.free("a")
    seqs.remove_worker(2)
    assert seqs._holders == {}
