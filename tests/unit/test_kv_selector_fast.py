"""``WorkerSelector.select`` (the fleet-scale fast path) decides exactly as ``choose(compute_costs(...))``."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.kv_router.indexer import OverlapScores
from dynamo.kv_router.selector import WorkerSelector, choose, compute_costs

pytestmark = pytest.mark.unit


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
    temperature=st.sampled_from([0.0, 0.0, 0.5, 2.0]),
    weight=st.sampled_from([0.0, 1.0, 2.5]),
    seed=st.integers(0, 1000),
)
def test_select_equals_compute_costs_then_choose(n, data, temperature, weight, seed):
    cands = [(w // 2, w % 2) for w in range(n)]
    small = st.integers(0, 4)  # small values: many ties
    scores = {k: v for k in cands if (v := data.draw(small))}
    sizes = {k: data.draw(small) for k in cands}
    prefill = {k: float(data.draw(st.integers(0, 3)) * 16) for k in cands if data.draw(st.booleans())}
    decode = {k: float(data.draw(small)) for k in cands if data.draw(st.booleans())}
    overlaps = OverlapScores(scores, sizes)
    isl = data.draw(st.integers(1, 100))
    sel = WorkerSelector(random.Random(seed), top_k=3).select(
        cands, isl, 16, overlaps, prefill, decode, overlap_score_weight=weight, temperature=temperature)
    costs = compute_costs(cands, isl, 16, overlaps, prefill, decode, weight)
    want = choose(costs, temperature, random.Random(seed))
    assert (sel.worker_id, sel.dp_rank, sel.overlap_blocks) == (want.worker_id, want.dp_rank, want.overlap_blocks)
    ranked = sorted(costs, key=lambda c: (c.logit, c.tree_size))[:3]
    if want not in ranked:
        ranked[-1:] = [want]
    assert sel.candidates == ranked
