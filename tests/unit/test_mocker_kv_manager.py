"""KvManager: pools, prefix caching, promotion, depth-aware LRU and the events it emits (reference §3.4)."""

from __future__ import annotations

import pytest

from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.protocols import KvRemoved, KvStored, RouterEvent
from dynamo.mocker.kv_manager import KvManager, KvSequence

pytestmark = pytest.mark.unit

BS = 4


def tokens(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def router_hashes(toks: list[int]) -> list[int]:
    return compute_seq_hashes(compute_block_hashes(toks, BS))


def stored(events: list[RouterEvent]) -> list[KvStored]:
    return [e.event.data for e in events if isinstance(e.event.data, KvStored)]


def removed(events: list[RouterEvent]) -> list[int]:
    return [h for e in events if isinstance(e.event.data, KvRemoved) for h in e.event.data.block_hashes]


def test_full_blocks_are_stored_with_router_hashes_and_parent_chain() -> None:
    kv = KvManager(16, BS, worker_id=7, dp_rank=1)
    toks = tokens(10)
    seq = kv.new_sequence(toks)
    assert kv.allocate(seq, 10)
    events = kv.drain_events()
    assert len(events) == 1
    ev = events[0]
    assert ev.worker_id == 7 and ev.event.dp_rank == 1 and ev.event.event_id == 0
    data = ev.event.data
    assert isinstance(data, KvStored)
    assert data.parent_hash is None
    expected = router_hashes(toks)
    assert [b.block_hash for b in data.blocks] == expected
    assert [b.tokens_hash for b in data.blocks] == compute_block_hashes(toks, BS)
    # two full blocks + one partial tail
    assert kv.num_active_blocks == 3
    assert kv.cached_block_hashes() == set(expected)


def test_partial_tail_is_promoted_when_filled() -> None:
    kv = KvManager(16, BS)
    seq = kv.new_sequence(tokens(6))
    assert kv.allocate(seq, 6)
    first = stored(kv.drain_events())
    assert len(first) == 1 and len(first[0].blocks) == 1
    seq.tokens.extend([100, 101])  # two decode tokens fill the tail
    assert kv.allocate(seq, 7)
    assert kv.drain_events() == []  # still partial
    assert kv.allocate(seq, 8)
    promo = stored(kv.drain_events())
    full = router_hashes(seq.tokens)
    assert len(promo) == 1
    assert promo[0].parent_hash == full[0]
    assert [b.block_hash for b in promo[0].blocks] == [full[1]]
    assert kv.num_active_blocks == 2  # the partial's slot became the full block


def test_event_ids_are_monotonic_and_sink_receives_events() -> None:
    got: list[RouterEvent] = []
    kv = KvManager(4, BS, event_sink=got.append)
    for i in range(3):
        seq = kv.new_sequence(tokens(8, start=100 * i))
        assert kv.allocate(seq, 8)
        kv.free(seq)
    assert kv.drain_events() == []
    ids = [e.event.event_id for e in got]
    assert ids == list(range(len(ids)))
    assert len(removed(got)) == 2  # the third request evicted the first's two blocks


def test_shared_prefix_is_refcounted_and_not_stored_twice() -> None:
    kv = KvManager(16, BS)
    a = kv.new_sequence(tokens(8))
    b = kv.new_sequence(tokens(8))
    assert kv.allocate(a, 8)
    kv.drain_events()
    assert kv.cached_prefix_blocks(b, 2) == (2, 2)
    assert kv.allocate(b, 8)
    assert kv.drain_events() == []
    assert kv.num_active_blocks == 2
    h = router_hashes(tokens(8))
    assert kv.active[h[0]] == 2 and kv.active[h[1]] == 2
    kv.free(a)
    assert kv.num_active_blocks == 2 and kv.num_inactive_blocks == 0
    kv.free(b)
    assert kv.num_active_blocks == 0 and kv.num_inactive_blocks == 2


def test_reactivation_from_inactive_emits_no_stored_event() -> None:
    kv = KvManager(16, BS)
    a = kv.new_sequence(tokens(12))
    assert kv.allocate(a, 12)
    kv.free(a)
    kv.drain_events()
    b = kv.new_sequence(tokens(12))
    assert kv.cached_prefix_blocks(b, 3) == (3, 0)
    assert kv.allocate(b, 12)
    assert kv.drain_events() == []
    assert kv.num_inactive_blocks == 0 and kv.num_active_blocks == 3


def test_depth_aware_lru_evicts_chain_tail_before_prefix() -> None:
    kv = KvManager(4, BS)
    a = kv.new_sequence(tokens(16))
    assert kv.allocate(a, 16)
    kv.free(a)
    kv.drain_events()
    chain = router_hashes(tokens(16))
    # Each new single-block sequence needs one slot: evictions must go deepest first.
    evicted: list[int] = []
    for i in range(4):
        s = kv.new_sequence(tokens(4, start=1000 + 10 * i))
        assert kv.allocate(s, 4)
        evicted += removed(kv.drain_events())
    assert evicted == list(reversed(chain))


def test_allocation_failure_changes_nothing() -> None:
    kv = KvManager(3, BS)
    a = kv.new_sequence(tokens(8))
    assert kv.allocate(a, 8)
    b = kv.new_sequence(tokens(8, start=50))
    before = (dict(kv.active), list(kv.inactive), list(b.blocks))
    assert not kv.allocate(b, 8)
    assert (dict(kv.active), list(kv.inactive), list(b.blocks)) == before


def test_destroy_removes_unshared_blocks_with_event() -> None:
    kv = KvManager(16, BS)
    a = kv.new_sequence(tokens(8))
    b = kv.new_sequence(tokens(12))
    assert kv.allocate(a, 8)
    assert kv.allocate(b, 12)
    kv.drain_events()
    kv.destroy(b)
    h = router_hashes(tokens(12))
    assert removed(kv.drain_events()) == [h[2]]  # the first two blocks are still a's
    assert kv.cached_block_hashes() == set(h[:2])
    assert kv.num_inactive_blocks == 0


def test_no_prefix_caching_gives_unique_blocks_and_no_events() -> None:
    kv = KvManager(16, BS, enable_prefix_caching=False)
    a = kv.new_sequence(tokens(8))
    b = kv.new_sequence(tokens(8))
    assert kv.cached_prefix_blocks(b, 2) == (0, 0)
    assert kv.allocate(a, 8) and kv.allocate(b, 8)
    assert kv.num_active_blocks == 4
    kv.free(a)
    kv.free(b)
    assert kv.num_active_blocks == 0 and kv.num_inactive_blocks == 0
    assert kv.drain_events() == [] and kv.cached_block_hashes() == set()


def test_promotion_onto_an_already_cached_hash_merges_without_event() -> None:
    kv = KvManager(16, BS)
    a = kv.new_sequence(tokens(8))
    assert kv.allocate(a, 8)
    b = kv.new_sequence(tokens(8))
    # b computes its first 6 tokens without a prefix hit (e.g. admitted before a finished its chunk)
    assert kv.allocate(b, 6)
    kv.drain_events()
    assert kv.allocate(b, 8)
    assert kv.drain_events() == []
    h = router_hashes(tokens(8))
    assert b.blocks == h and kv.active[h[1]] == 2
    assert kv.num_active_blocks == 2


def test_sequence_hashes_are_lazy_and_match_router() -> None:
    seq = KvSequence(tokens(20))
    seq.ensure_hashes(2, BS)
    assert len(seq.seq_hashes) == 2
    seq.ensure_hashes(5, BS)
    assert seq.seq_hashes == router_hashes(tokens(20))
