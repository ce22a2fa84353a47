"""The router's index under a simulated fleet's event stream equals a brute-force model of the caches.

Small fleets of the mocker's real KV managers (tiny capacities, so eviction is constant) serve routed
requests drawn from a small prefix universe; every event goes into one tree (each implementation). After every
request, each worker's indexed blocks must equal its cache, and ``find_matches`` must equal a
brute-force longest-cached-prefix walk per worker.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.protocols import RouterEvent
from dynamo.mocker.kv_manager import KvManager
from tests.unit.indexer_impls import IMPLS

pytestmark = pytest.mark.unit

BS = 4
# Every prompt is a path in this small tree of token blocks, so prompts share prefixes a lot.
BLOCKS = [[b * 10 + i for i in range(BS)] for b in range(6)]


def brute_force(kvs: list[KvManager], seq: list[int]) -> dict[tuple[int, int], int]:
    out = {}
    for w, kv in enumerate(kvs):
        cached = kv.cached_block_hashes()
        depth = 0
        while depth < len(seq) and seq[depth] in cached:
            depth += 1
        if depth:
            out[(w, 0)] = depth
    return out


@pytest.mark.parametrize("tree_cls", IMPLS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_workers=st.integers(1, 5),
    capacity=st.integers(3, 12),
    requests=st.lists(
        st.tuples(st.lists(st.integers(0, len(BLOCKS) - 1), min_size=1, max_size=6),  # prompt blocks
                  st.integers(0, 3),  # extra tokens (a partial tail block)
                  st.integers(0, 4),  # which worker (mod fleet size)
                  st.sampled_from(["free", "keep", "destroy"])),
        min_size=1, max_size=40),
)
def test_index_equals_fleet_caches(tree_cls, n_workers, capacity, requests):
    tree = tree_cls()
    events: list[RouterEvent] = []
    kvs = [KvManager(capacity, BS, worker_id=w, event_sink=events.append) for w in range(n_workers)]
    live: list[tuple[int, object]] = []
    for path, extra, worker, fate in requests:
        tokens = [t for b in path for t in BLOCKS[b]] + list(range(900, 900 + extra))
        w = worker % n_workers
        kv = kvs[w]
        seq = kv.new_sequence(tokens)
        if kv.allocate(seq, len(tokens)):
            if fate == "free":
                kv.free(seq)
            elif fate == "destroy":
                kv.destroy(seq)
            else:
                live.append((w, seq))
        if len(live) > 3:
            lw, lseq = live.pop(0)
            kvs[lw].free(lseq)
        for ev in events:
            assert tree.apply_event(ev) == "ok"
        events.clear()
        for k, m in enumerate(kvs):
            assert tree.block_hashes(k, 0) == m.cached_block_hashes()
        local = compute_block_hashes(tokens, BS)
        assert tree.find_matches(local).scores == brute_force(kvs, compute_seq_hashes(local))
