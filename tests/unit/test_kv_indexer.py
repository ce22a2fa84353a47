"""RadixTree semantics (reference §2.3) and a property test against a brute-force prefix matcher."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.indexer import (
    STATUS_BLOCK_NOT_FOUND,
    STATUS_INVALID_BLOCK,
    STATUS_OK,
    STATUS_PARENT_NOT_FOUND,
    WorkerKey,
)
from dynamo.kv_router.protocols import (
    KvCacheEvent,
    KvCleared,
    KvRemoved,
    KvStored,
    RouterEvent,
    StoredBlock,
)
from tests.unit.indexer_impls import IMPLS

# Every test runs against the pure-Python tree and the compiled one (tree_cls).
pytestmark = [pytest.mark.unit, pytest.mark.parametrize("tree_cls", IMPLS)]


def stored(
    worker: int, event_id: int, blocks: Sequence[tuple[int, int]], parent: int | None = None, dp: int = 0
) -> RouterEvent:
    return RouterEvent(
        worker,
        KvCacheEvent(event_id, KvStored(parent, [StoredBlock(h, t) for h, t in blocks]), dp),
    )


def removed(worker: int, event_id: int, hashes: Sequence[int], dp: int = 0) -> RouterEvent:
    return RouterEvent(worker, KvCacheEvent(event_id, KvRemoved(list(hashes)), dp))


def cleared(worker: int, event_id: int, dp: int = 0) -> RouterEvent:
    return RouterEvent(worker, KvCacheEvent(event_id, KvCleared(), dp))


def chain(local: Sequence[int]) -> list[tuple[int, int]]:
    return list(zip(compute_seq_hashes(local), local, strict=True))


LOCAL = compute_block_hashes(list(range(16 * 6)), 16)  # six distinct local hashes


def test_store_and_match_prefix_depth(tree_cls: type) -> None:
    tree = tree_cls()
    assert tree.apply_event(stored(1, 0, chain(LOCAL[:4]))) == STATUS_OK
    assert tree.apply_event(stored(2, 0, chain(LOCAL[:2]))) == STATUS_OK
    res = tree.find_matches(LOCAL[:5])
    assert res.scores == {(1, 0): 4, (2, 0): 2}
    assert res.tree_sizes == {(1, 0): 4, (2, 0): 2}
    assert tree.find_matches([LOCAL[1], LOCAL[2]]).scores == {}  # not a prefix from the root
    assert tree.num_nodes == 4


def test_stored_continues_under_known_parent(tree_cls: type) -> None:
    tree = tree_cls()
    seq = compute_seq_hashes(LOCAL[:4])
    tree.apply_event(stored(1, 0, list(zip(seq[:2], LOCAL[:2], strict=True))))
    status = tree.apply_event(stored(1, 1, list(zip(seq[2:], LOCAL[2:4], strict=True)), parent=seq[1]))
    assert status == STATUS_OK
    assert tree.find_matches(LOCAL[:4]).scores == {(1, 0): 4}


def test_unknown_parent_rejects_whole_event(tree_cls: type) -> None:
    tree = tree_cls()
    status = tree.apply_event(stored(1, 0, chain(LOCAL[:3]), parent=12345))
    assert status == STATUS_PARENT_NOT_FOUND
    assert tree.find_matches(LOCAL[:3]).scores == {}
    assert tree.num_blocks(1) == 0
    assert tree.num_nodes == 0
    assert tree.event_counts[("stored", STATUS_PARENT_NOT_FOUND)] == 1


def test_parent_of_another_worker_is_unknown(tree_cls: type) -> None:
    tree = tree_cls()
    seq = compute_seq_hashes(LOCAL[:2])
    tree.apply_event(stored(1, 0, chain(LOCAL[:1])))
    assert tree.apply_event(stored(2, 0, [(seq[1], LOCAL[1])], parent=seq[0])) == STATUS_PARENT_NOT_FOUND
    # ...and so is the same hash on another dp rank of the same worker.
    assert (
        tree.apply_event(stored(1, 0, [(seq[1], LOCAL[1])], parent=seq[0], dp=1)) == STATUS_PARENT_NOT_FOUND
    )


def test_self_referencing_chain_is_invalid(tree_cls: type) -> None:
    tree = tree_cls()
    assert tree.apply_event(stored(1, 0, [(7, LOCAL[0]), (7, LOCAL[1])])) == STATUS_INVALID_BLOCK
    tree.apply_event(stored(1, 1, [(7, LOCAL[0])]))
    assert tree.apply_event(stored(1, 2, [(7, LOCAL[1])], parent=7)) == STATUS_INVALID_BLOCK
    assert tree.num_blocks(1) == 1
    assert tree.event_counts[("stored", STATUS_INVALID_BLOCK)] == 2


def test_an_invalid_event_found_midway_leaves_the_tree_as_it_was(tree_cls: type) -> None:
    """Stored events are applied optimistically and taken back on a hash already present: a chain whose
    fourth block repeats its second, partly over another worker's nodes, must change nothing."""
    tree = tree_cls()
    tree.apply_event(stored(1, 0, [(1, LOCAL[0]), (2, LOCAL[1])]))
    before = (tree.num_nodes, tree.find_matches(LOCAL).scores, dict(tree.find_matches([]).tree_sizes))
    bad = [(11, LOCAL[0]), (12, LOCAL[1]), (13, LOCAL[2]), (12, LOCAL[3])]
    assert tree.apply_event(stored(2, 0, bad)) == STATUS_INVALID_BLOCK
    assert (tree.num_nodes, tree.find_matches(LOCAL).scores) == before[:2]
    assert {k: v for k, v in tree.find_matches([]).tree_sizes.items() if v} == before[2]
    # ...and the same chain without the repeat is then applied in full.
    assert tree.apply_event(stored(2, 1, bad[:3])) == STATUS_OK
    assert tree.find_matches(LOCAL).scores == {(1, 0): 2, (2, 0): 3}


def test_remove_does_not_cascade(tree_cls: type) -> None:
    tree = tree_cls()
    seq = compute_seq_hashes(LOCAL[:3])
    tree.apply_event(stored(1, 0, chain(LOCAL[:3])))
    assert tree.apply_event(removed(1, 1, [seq[1]])) == STATUS_OK
    assert tree.find_matches(LOCAL[:3]).scores == {(1, 0): 1}
    assert tree.num_blocks(1) == 2  # the third block is still held
    assert tree.num_nodes == 3  # the emptied middle node still carries its held child
    # Re-storing the middle block restores the full match without re-sending the third.
    tree.apply_event(stored(1, 2, [(seq[1], LOCAL[1])], parent=seq[0]))
    assert tree.find_matches(LOCAL[:3]).scores == {(1, 0): 3}


def test_remove_unknown_block_reports_but_applies_the_rest(tree_cls: type) -> None:
    tree = tree_cls()
    seq = compute_seq_hashes(LOCAL[:2])
    tree.apply_event(stored(1, 0, chain(LOCAL[:2])))
    assert tree.apply_event(removed(1, 1, [999, seq[1]])) == STATUS_BLOCK_NOT_FOUND
    assert tree.num_blocks(1) == 1
    assert tree.event_counts[("removed", STATUS_BLOCK_NOT_FOUND)] == 1


def test_worker_drops_out_and_never_rejoins(tree_cls: type) -> None:
    tree = tree_cls()
    # worker 2 holds blocks 0 and 2 but not 1: its score stops at 1.
    seq = compute_seq_hashes(LOCAL[:3])
    tree.apply_event(stored(1, 0, chain(LOCAL[:3])))
    tree.apply_event(stored(2, 0, chain(LOCAL[:3])))
    tree.apply_event(removed(2, 1, [seq[1]]))
    assert tree.find_matches(LOCAL[:3]).scores == {(1, 0): 3, (2, 0): 1}


def test_cleared_drops_all_dp_ranks_but_keeps_worker(tree_cls: type) -> None:
    tree = tree_cls()
    tree.apply_event(stored(1, 0, chain(LOCAL[:3]), dp=0))
    tree.apply_event(stored(1, 0, chain(LOCAL[:2]), dp=1))
    tree.apply_event(stored(2, 0, chain(LOCAL[:1])))
    assert tree.num_blocks(1) == 5
    assert tree.apply_event(cleared(1, 1, dp=0)) == STATUS_OK
    assert tree.num_blocks(1) == 0
    assert set(tree.workers()) == {(1, 0), (1, 1), (2, 0)}
    assert tree.find_matches(LOCAL[:3]).scores == {(2, 0): 1}
    assert tree.num_nodes == 1


def test_remove_worker_forgets_it_and_frees_memory(tree_cls: type) -> None:
    tree = tree_cls()
    tree.apply_event(stored(1, 4, chain(LOCAL[:3]), dp=0))
    tree.apply_event(stored(1, 2, chain(LOCAL[:2]), dp=1))
    tree.remove_worker(1)
    assert tree.workers() == []
    assert tree.num_nodes == 0
    assert tree.last_event_id(1, 0) is None
    # The freed slot is reused by a new worker without leaking old membership.
    tree.apply_event(stored(3, 0, chain(LOCAL[:1])))
    assert tree.find_matches(LOCAL[:3]).scores == {(3, 0): 1}


def test_event_ids_and_gap_detection(tree_cls: type) -> None:
    tree = tree_cls()
    assert tree.detect_gap(1, 0, 5) is None  # first sighting: no history, caller dumps instead
    tree.apply_event(stored(1, 5, chain(LOCAL[:1])))
    assert tree.last_event_id(1, 0) == 5
    assert tree.detect_gap(1, 0, 6) is None
    assert tree.detect_gap(1, 0, 9) == (6, 8)
    assert tree.detect_gap(1, 1, 9) is None  # per dp rank
    # Out-of-order events still apply but do not move the high-water mark back.
    seq = compute_seq_hashes(LOCAL[:2])
    assert tree.apply_event(stored(1, 3, [(seq[1], LOCAL[1])], parent=seq[0])) == STATUS_OK
    assert tree.last_event_id(1, 0) == 5
    assert tree.find_matches(LOCAL[:2]).scores == {(1, 0): 2}


def test_early_exit_stops_once_one_worker_remains(tree_cls: type) -> None:
    tree = tree_cls()
    tree.apply_event(stored(1, 0, chain(LOCAL[:5])))
    tree.apply_event(stored(2, 0, chain(LOCAL[:2])))
    assert tree.find_matches(LOCAL[:5]).scores == {(1, 0): 5, (2, 0): 2}
    early = tree.find_matches(LOCAL[:5], early_exit=True).scores
    assert early[(2, 0)] == 2
    assert 3 <= early[(1, 0)] <= 5


def test_workers_with_different_external_hashes_share_nodes(tree_cls: type) -> None:
    tree = tree_cls()
    tree.apply_event(stored(1, 0, [(101, LOCAL[0]), (102, LOCAL[1])]))
    tree.apply_event(stored(2, 0, [(201, LOCAL[0]), (202, LOCAL[1])]))
    assert tree.num_nodes == 2
    assert tree.find_matches(LOCAL[:2]).scores == {(1, 0): 2, (2, 0): 2}
    tree.apply_event(removed(1, 1, [102]))
    assert tree.find_matches(LOCAL[:2]).scores == {(1, 0): 1, (2, 0): 2}


def test_dump_events_rebuilds_equivalent_tree(tree_cls: type) -> None:
    tree = tree_cls()
    seq = compute_seq_hashes(LOCAL[:5])
    tree.apply_event(stored(1, 0, chain(LOCAL[:5])))
    tree.apply_event(stored(2, 0, chain(LOCAL[:3]), dp=1))
    tree.apply_event(removed(1, 1, [seq[1], seq[2]]))  # worker 1 keeps 0, 3, 4: a gap in its chain
    rebuilt = tree_cls()
    for ev in tree.dump_events():
        assert rebuilt.apply_event(ev) == STATUS_OK
    assert rebuilt.num_nodes == tree.num_nodes
    for n in range(1, 6):
        expected = tree.find_matches(LOCAL[:n])
        got = rebuilt.find_matches(LOCAL[:n])
        assert got.scores == expected.scores
        assert got.tree_sizes == expected.tree_sizes
    # The rebuilt tree accepts continuations under the dumped hashes.
    assert rebuilt.apply_event(stored(1, 9, [(seq[2], LOCAL[2])], parent=seq[1])) == STATUS_PARENT_NOT_FOUND
    assert rebuilt.apply_event(stored(1, 9, [(seq[1], LOCAL[1])], parent=seq[0])) == STATUS_OK


# --------------------------------------------------------------------------- property test


class BruteForceIndex:
    """Per worker: external hash → path of local hashes; a worker holds a path while any hash maps there."""

    def __init__(self) -> None:
        self.lookup: dict[WorkerKey, dict[int, tuple[int, ...]]] = {}
        self.held: dict[WorkerKey, Counter[tuple[int, ...]]] = {}

    def store(self, key: WorkerKey, parent: int | None, blocks: Sequence[tuple[int, int]]) -> str:
        table = self.lookup.setdefault(key, {})
        held = self.held.setdefault(key, Counter())
        if parent is None:
            base: tuple[int, ...] = ()
        elif parent in table:
            base = table[parent]
        else:
            return STATUS_PARENT_NOT_FOUND
        hashes = [h for h, _ in blocks]
        if len(set(hashes)) != len(hashes) or parent in hashes:
            return STATUS_INVALID_BLOCK
        for h, t in blocks:
            path = (*base, t)
            old = table.get(h)
            if old != path:
                if old is not None:
                    held[old] -= 1
                table[h] = path
                held[path] += 1
            base = path
        return STATUS_OK

    def remove(self, key: WorkerKey, hashes: Sequence[int]) -> str:
        table = self.lookup.get(key)
        if table is None:
            return STATUS_BLOCK_NOT_FOUND if hashes else STATUS_OK
        status = STATUS_OK
        for h in hashes:
            if h not in table:
                status = STATUS_BLOCK_NOT_FOUND
                continue
            self.held[key][table.pop(h)] -= 1
        return status

    def clear(self, worker: int) -> None:
        for key in self.lookup:
            if key[0] == worker:
                self.lookup[key].clear()
                self.held[key].clear()

    def remove_worker(self, worker: int) -> None:
        for key in [k for k in self.lookup if k[0] == worker]:
            del self.lookup[key]
            del self.held[key]

    def scores(self, query: Sequence[int]) -> dict[WorkerKey, int]:
        out: dict[WorkerKey, int] = {}
        for key, held in self.held.items():
            depth = 0
            while depth < len(query) and held[tuple(query[: depth + 1])] > 0:
                depth += 1
            if depth:
                out[key] = depth
        return out

    def sizes(self) -> dict[WorkerKey, int]:
        return {k: len(t) for k, t in self.lookup.items() if t}


ALPHABET = [11, 22, 33]  # tiny local-hash alphabet so that paths share prefixes a lot
WORKERS = [(1, 0), (1, 1), (2, 0), (3, 0)]


def block_hash(key: WorkerKey, path: tuple[int, ...]) -> int:
    # Workers 1 and 3 compute the same external hashes, worker 2 its own (engines may differ).
    salt = 2 if key[0] == 2 else 0
    return hash((salt, path)) & 0xFFFFFFFFFFFF


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_indexer_agrees_with_brute_force(tree_cls: type, data: st.DataObject) -> None:
    tree = tree_cls()
    model = BruteForceIndex()
    path_st = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=5)
    n_ops = data.draw(st.integers(10, 60), label="n_ops")
    event_id = 0
    for _ in range(n_ops):
        event_id += 1
        op = data.draw(
            st.sampled_from(["store", "store", "store", "extend", "remove", "clear", "drop", "bad"])
        )
        key = data.draw(st.sampled_from(WORKERS))
        if op == "store":
            path = tuple(data.draw(path_st))
            blocks = [(block_hash(key, path[: i + 1]), path[i]) for i in range(len(path))]
            ev = stored(key[0], event_id, blocks, dp=key[1])
            assert tree.apply_event(ev) == model.store(key, None, blocks)
        elif op == "extend":
            known = sorted(model.lookup.get(key, {}).items())
            if known and data.draw(st.booleans()):
                parent_hash, base = data.draw(st.sampled_from(known))
            else:
                parent_hash, base = data.draw(st.integers(0, 2**48)), ()
            suffix = data.draw(path_st)
            blocks = []
            path = base
            for t in suffix:
                path = (*path, t)
                blocks.append((block_hash(key, path), t))
            ev = stored(key[0], event_id, blocks, parent=parent_hash, dp=key[1])
            assert tree.apply_event(ev) == model.store(key, parent_hash, blocks)
        elif op == "remove":
            known_hashes = sorted(model.lookup.get(key, {}))
            pick = data.draw(st.lists(st.sampled_from(known_hashes), max_size=3)) if known_hashes else []
            if data.draw(st.booleans()):
                pick.append(data.draw(st.integers(0, 2**48)))
            pick = list(dict.fromkeys(pick))
            assert tree.apply_event(removed(key[0], event_id, pick, dp=key[1])) == model.remove(key, pick)
        elif op == "clear":
            tree.apply_event(cleared(key[0], event_id, dp=key[1]))
            model.clear(key[0])
        elif op == "drop":
            tree.remove_worker(key[0])
            model.remove_worker(key[0])
        else:  # a chain that refers to itself, or an inconsistent re-store of a known hash
            path = tuple(data.draw(path_st))
            h = block_hash(key, path)
            if data.draw(st.booleans()):
                blocks = [(h, t) for t in path]
            else:
                blocks = [(h, data.draw(st.sampled_from(ALPHABET)))]
            ev = stored(key[0], event_id, blocks, dp=key[1])
            assert tree.apply_event(ev) == model.store(key, None, blocks)

        query = data.draw(st.lists(st.sampled_from(ALPHABET), max_size=6), label="query")
        result = tree.find_matches(query)
        assert result.scores == model.scores(query)
        assert {k: v for k, v in result.tree_sizes.items() if v} == model.sizes()

    # Snapshots: the dump rebuilds a tree that answers every query identically.
    rebuilt = tree_cls()
    for ev in tree.dump_events():
        assert rebuilt.apply_event(ev) == STATUS_OK
    assert rebuilt.num_nodes == tree.num_nodes
    for query in ([11, 22, 33, 11], [22, 22, 22], [33, 11], [11, 11, 11, 11, 11]):
        assert rebuilt.find_matches(query).scores == tree.find_matches(query).scores
    assert {k: v for k, v in rebuilt.find_matches([]).tree_sizes.items() if v} == model.sizes()

    # Memory is bounded by what workers hold: once every worker clears, only the root is left.
    for worker in {k[0] for k in WORKERS}:
        tree.apply_event(cleared(worker, event_id + 1))
    assert tree.num_nodes == 0
    assert tree.find_matches(ALPHABET).scores == {}
    assert all(n == 0 for n in tree.find_matches(ALPHABET).tree_sizes.values())
