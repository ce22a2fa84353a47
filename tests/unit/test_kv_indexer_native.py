"""The compiled KV indexer equals the pure-Python one, operation by operation, on random streams.

Both trees get the same stream: stored chains (from the root or under a held block, a tiny local-hash
alphabet so paths share nodes), removals that take parents while their children stay (what LRU eviction
does), inconsistent re-stores (one hash moved elsewhere, two hashes for one node), invalid and
unknown-parent events, removals of unknown hashes, clears, worker removal (slots reused), and the direct
``store_blocks``/``remove_blocks`` calls of the approximate indexer. After every step every observable
must be identical: statuses, scores (with their order), tree sizes, node count, workers, per-worker
blocks and hashes, last event ids, gaps, event counts; at the end each tree's snapshot rebuilds the
other's index. Also: the implementation switch and the build.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.kv_router import indexer
from dynamo.kv_router.indexer import PyRadixTree, select_radix_tree
from dynamo.kv_router.protocols import KvCacheEvent, KvCleared, KvRemoved, KvStored, RouterEvent, StoredBlock
from tests.unit.indexer_impls import NATIVE_MISSING, NativeRadixTree

pytestmark = [pytest.mark.unit, pytest.mark.skipif(bool(NATIVE_MISSING), reason=NATIVE_MISSING)]

ALPHABET = [5, 6, 7]
WORKERS = [(1, 0), (1, 1), (2, 0), (3, 0), (4, 0)]
U64 = 2**64 - 1


def observe(tree, queries: list[list[int]]) -> tuple:
    """Everything a caller can see of a tree (ordered where the interface hands out ordered things)."""
    matches = []
    for q in queries:
        for early in (False, True):
            res = tree.find_matches(q, early_exit=early)
            matches.append(list(res.scores.items()))
    sizes = tree.find_matches([]).tree_sizes
    workers = tree.workers()
    return (
        matches,
        list(sizes.items()),
        tree.num_nodes,
        workers,
        {k: tree.block_hashes(*k) for k in workers},
        {w: tree.num_blocks(w) for w in {k[0] for k in WORKERS}},
        {k: tree.last_event_id(*k) for k in WORKERS},
        {k: tree.detect_gap(k[0], k[1], 50) for k in WORKERS},
        dict(tree.event_counts),
    )


def rebuilt_view(events: list[RouterEvent], cls: type, queries: list[list[int]]) -> tuple:
    fresh = cls()
    for ev in events:
        assert fresh.apply_event(ev) == "ok"
    view = []
    for q in queries:
        view.append(fresh.find_matches(q).scores)
    workers = [k for k in fresh.workers() if fresh.num_blocks(*k)]
    return view, fresh.num_nodes, {k: fresh.block_hashes(*k) for k in workers}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_native_equals_python(data: st.DataObject) -> None:
    py, nat = PyRadixTree(), NativeRadixTree()
    path_st = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=6)
    # Few hashes, so that streams collide: re-stores, aliases, duplicates, parents among the blocks.
    hash_st = st.one_of(st.integers(0, 40), st.integers(U64 - 3, U64))
    held: dict[tuple[int, int], list[int]] = {}
    queries = [[5, 6, 7, 5, 6], [5, 5, 5, 5], [6, 7], [7, 7, 6, 5], [5, 6, 6]]
    event_id = 0
    for _ in range(data.draw(st.integers(5, 70), label="n_ops")):
        event_id += data.draw(st.sampled_from([1, 1, 1, 3, -2]))
        key = data.draw(st.sampled_from(WORKERS))
        known = held.get(key, [])
        op = data.draw(st.sampled_from(["store", "store", "extend", "extend", "evict", "remove", "clear",
                                        "drop", "direct_store", "direct_remove"]))
        ev = None
        if op in ("store", "extend", "direct_store"):
            path = data.draw(path_st)
            blocks = [(data.draw(hash_st), t) for t in path]
            parent = None
            if op == "extend":
                parent = data.draw(st.sampled_from(known)) if known and data.draw(st.booleans()) else \
                    data.draw(hash_st)
            if op == "direct_store":
                a, b = py.store_blocks(key, parent, blocks), nat.store_blocks(key, parent, blocks)
                assert a == b
            else:
                ev = RouterEvent(key[0], KvCacheEvent(event_id, KvStored(parent, [StoredBlock(*b) for b in blocks]),
                                                      key[1]))
            held.setdefault(key, []).extend(h for h, _ in blocks)
        elif op in ("evict", "remove", "direct_remove"):
            if op == "evict" and known:
                hashes = known[: data.draw(st.integers(1, 3))]  # oldest first: parents before children
            else:
                hashes = data.draw(st.lists(st.one_of(st.sampled_from(known), hash_st) if known else hash_st,
                                            max_size=4))
            if op == "direct_remove":
                assert py.remove_blocks(key, hashes) == nat.remove_blocks(key, hashes)
            else:
                ev = RouterEvent(key[0], KvCacheEvent(event_id, KvRemoved(hashes), key[1]))
        elif op == "clear":
            ev = RouterEvent(key[0], KvCacheEvent(event_id, KvCleared(), key[1]))
        else:
            py.remove_worker(key[0])
            nat.remove_worker(key[0])
        if ev is not None:
            status = py.apply_event(ev)
            assert nat.apply_event(ev) == status
        queries.append(data.draw(st.lists(st.sampled_from(ALPHABET), max_size=7), label="query"))
        assert observe(nat, queries[-3:]) == observe(py, queries[-3:])

    # Snapshots cross over: each implementation's dump rebuilds the same index in the other.
    expected = rebuilt_view(py.dump_events(), PyRadixTree, queries)
    assert rebuilt_view(nat.dump_events(), PyRadixTree, queries) == expected
    assert rebuilt_view(py.dump_events(), NativeRadixTree, queries) == expected
    assert rebuilt_view(nat.dump_events(), NativeRadixTree, queries) == expected
    # Clearing everyone returns both to the bare root.
    for w in {k[0] for k in WORKERS}:
        py.clear_worker(w)
        nat.clear_worker(w)
    assert nat.num_nodes == py.num_nodes == 0


def test_long_chains_and_wide_fleets() -> None:
    """Deep chains (iterative walks, no recursion) and a node held by a thousand workers."""
    py, nat = PyRadixTree(), NativeRadixTree()
    chain = [(i + 1, 1000 + i) for i in range(20_000)]
    for tree in (py, nat):
        assert tree.store_blocks((0, 0), None, chain) == "ok"
        for w in range(1, 1025):
            assert tree.store_blocks((w, 0), None, [(7, 1000), (8, 1001), (w + 100, 5000 + w % 3)]) == "ok"
    query = [1000, 1001, 1002, 1003]
    assert list(nat.find_matches(query).scores.items()) == list(py.find_matches(query).scores.items())
    assert nat.num_nodes == py.num_nodes
    assert len(nat.dump_events()) == len(py.dump_events())
    for tree in (py, nat):
        tree.remove_blocks((0, 0), [h for h, _ in chain[:10_000]])  # a held tail under an emptied chain
    assert nat.find_matches(query).scores == py.find_matches(query).scores
    assert nat.num_nodes == py.num_nodes
    del nat  # frees the 20k-deep chain without recursion


def test_out_of_range_hashes() -> None:
    """Queries and removals of non-u64 values match nothing (as in Python); storing one is a clear error."""
    nat = NativeRadixTree()
    nat.store_blocks((1, 0), None, [(1, 5)])
    assert nat.find_matches([-1]).scores == {} and nat.find_matches(["x", 5]).scores == {}
    assert nat.remove_blocks((1, 0), [-1, 2**64]) == "block_not_found"
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        nat.store_blocks((1, 0), None, [(-5, 5)])
    with pytest.raises(TypeError, match="worker key"):
        nat.store_blocks(1, None, [(2, 5)])


def test_impl_switch() -> None:
    assert select_radix_tree("python") is PyRadixTree
    assert select_radix_tree("native") is NativeRadixTree
    assert select_radix_tree("auto") is NativeRadixTree
    with pytest.raises(ValueError, match="DYN_KV_INDEXER_IMPL"):
        select_radix_tree("rust")
    assert indexer.RadixTree in (PyRadixTree, NativeRadixTree)


def test_env_var_picks_the_implementation() -> None:
    code = "from dynamo.kv_router.indexer import RadixTree; print(RadixTree.__name__)"
    for impl, name in (("python", "PyRadixTree"), ("native", "NativeRadixTree"), ("", "NativeRadixTree")):
        out = subprocess.run([sys.executable, "-c", code], env={**_env(), "DYN_KV_INDEXER_IMPL": impl},
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == name


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "DYN_KV_INDEXER_IMPL"}
