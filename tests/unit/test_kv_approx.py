"""Approximate mode (reference §2.6): routed prompts are indexed with a TTL and size pruning."""

from __future__ import annotations

import pytest

from dynamo.kv_router.approx import ApproxKvIndexer
from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes

pytestmark = pytest.mark.unit

LOCAL = compute_block_hashes(list(range(16 * 8)), 16)
SEQ = compute_seq_hashes(LOCAL)
OTHER = compute_block_hashes(list(range(1000, 1000 + 16 * 4)), 16)
OTHER_SEQ = compute_seq_hashes(OTHER)


def test_defaults() -> None:
    idx = ApproxKvIndexer()
    assert (idx.ttl_secs, idx.max_tree_size, idx.prune_target_ratio) == (120.0, 2**20, 0.8)


def test_routing_decision_is_indexed_until_ttl() -> None:
    idx = ApproxKvIndexer(ttl_secs=120.0)
    idx.process_routing_decision(1, 0, LOCAL[:4], SEQ[:4], now=0.0)
    assert idx.find_matches(LOCAL[:6], now=10.0).scores == {(1, 0): 4}
    assert idx.find_matches(LOCAL[:6], now=119.9).scores == {(1, 0): 4}
    assert idx.find_matches(LOCAL[:6], now=120.0).scores == {}
    assert idx.current_size == 0
    assert idx.tree.num_nodes == 0


def test_reuse_rearms_the_timer() -> None:
    idx = ApproxKvIndexer(ttl_secs=100.0)
    idx.process_routing_decision(1, 0, LOCAL[:4], SEQ[:4], now=0.0)
    idx.process_routing_decision(1, 0, LOCAL[:2], SEQ[:2], now=60.0)  # refreshes the first two blocks
    assert idx.find_matches(LOCAL[:4], now=110.0).scores == {(1, 0): 2}
    assert idx.num_blocks(1) == 2
    assert idx.find_matches(LOCAL[:4], now=160.0).scores == {}


def test_timers_are_per_worker() -> None:
    idx = ApproxKvIndexer(ttl_secs=100.0)
    idx.process_routing_decision(1, 0, LOCAL[:3], SEQ[:3], now=0.0)
    idx.process_routing_decision(2, 1, LOCAL[:3], SEQ[:3], now=50.0)
    assert idx.find_matches(LOCAL[:3], now=120.0).scores == {(2, 1): 3}


def test_injected_clock() -> None:
    t = [0.0]
    idx = ApproxKvIndexer(ttl_secs=10.0, clock=lambda: t[0])
    idx.process_routing_decision(1, 0, LOCAL[:2], SEQ[:2])
    assert idx.find_matches(LOCAL[:2]).scores == {(1, 0): 2}
    t[0] = 11.0
    assert idx.find_matches(LOCAL[:2]).scores == {}


def test_needs_a_time_source_to_record() -> None:
    with pytest.raises(ValueError):
        ApproxKvIndexer().process_routing_decision(1, 0, LOCAL[:2], SEQ[:2])


def test_size_pruning_removes_oldest_then_deepest_first() -> None:
    idx = ApproxKvIndexer(ttl_secs=1000.0, max_tree_size=10, prune_target_ratio=0.5)
    idx.process_routing_decision(1, 0, LOCAL[:8], SEQ[:8], now=0.0)  # 8 entries, oldest
    assert idx.current_size == 8
    idx.process_routing_decision(2, 0, OTHER[:4], OTHER_SEQ[:4], now=1.0)  # 12 > 10 → prune to 5
    assert idx.current_size == 5
    # Worker 1's entries expire first; among them the deepest go first, so its prefix survives.
    assert idx.find_matches(LOCAL[:8], now=2.0).scores == {(1, 0): 1}
    assert idx.find_matches(OTHER[:4], now=2.0).scores == {(2, 0): 4}


def test_pruning_ties_go_deepest_first_across_workers() -> None:
    idx = ApproxKvIndexer(ttl_secs=1000.0, max_tree_size=5, prune_target_ratio=0.8)
    idx.process_routing_decision(1, 0, LOCAL[:3], SEQ[:3], now=0.0)
    idx.process_routing_decision(2, 0, LOCAL[:3], SEQ[:3], now=0.0)  # 6 > 5 → prune to 4
    assert idx.current_size == 4
    scores = idx.find_matches(LOCAL[:3], now=0.0).scores
    assert scores == {(1, 0): 2, (2, 0): 2}  # both depth-3 entries (the deepest) went first


def test_remove_worker_drops_its_timers() -> None:
    idx = ApproxKvIndexer(ttl_secs=10.0)
    idx.process_routing_decision(1, 0, LOCAL[:3], SEQ[:3], now=0.0)
    idx.process_routing_decision(2, 0, LOCAL[:2], SEQ[:2], now=0.0)
    idx.remove_worker(1)
    assert idx.current_size == 2
    assert idx.workers() == [(2, 0)]
    assert idx.find_matches(LOCAL[:3], now=20.0).scores == {}
    assert idx.tree.num_nodes == 0


def test_many_rearms_keep_the_timer_heap_bounded() -> None:
    idx = ApproxKvIndexer(ttl_secs=1e9)
    for i in range(3000):
        idx.process_routing_decision(1, 0, LOCAL[:4], SEQ[:4], now=float(i))
    assert idx.current_size == 4
    assert len(idx._heap) <= 2 * 4 + 1024 + 4


def test_dump_events_reflects_indexed_blocks() -> None:
    idx = ApproxKvIndexer()
    idx.process_routing_decision(1, 0, LOCAL[:3], SEQ[:3], now=0.0)
    events = idx.dump_events()
    assert sum(len(e.event.data.blocks) for e in events) == 3  # type: ignore[union-attr]
