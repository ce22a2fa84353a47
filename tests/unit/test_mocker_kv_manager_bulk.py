"""The KV manager's fast paths (bulk allocation of wholly uncached blocks; a decode step's new tail
block or filled tail) equal its general path exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.mocker.kv_manager import KvManager

pytestmark = pytest.mark.unit

BS = 4


class GeneralOnly(KvManager):
    bulk_fresh = False


def run(cls: type[KvManager], capacity: int, ops: list[tuple[int, int, int, str]], decode: int = 0) -> tuple:
    events: list = []
    kv = cls(capacity, BS, event_sink=events.append)
    seqs = []
    outcomes = []
    for prefix, length, grow, fate in ops:
        tokens = [prefix * 1000 + i for i in range(length)]
        seq = kv.new_sequence(tokens)
        ok = kv.allocate(seq, max(1, length - grow))
        if ok and grow:
            ok = kv.allocate(seq, length)  # a second chunk (chunked prefill)
        for step in range(decode if ok else 0):
            # decode: one sampled token at a time (same ids for equal prefixes: shared filled blocks)
            seq.tokens.append(prefix * 7 + step)
            ok = kv.allocate(seq, len(seq.tokens))
            if not ok:
                break
        outcomes.append(ok)
        if ok:
            seqs.append(seq)
        if fate == "free" and seqs:
            kv.free(seqs.pop(0))
        elif fate == "destroy" and seqs:
            kv.destroy(seqs.pop())
    return (outcomes, [(e.event.event_id, e.event.data) for e in events], dict(kv.active), list(kv.inactive),
            [list(s.blocks) for s in seqs])


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(4, 40),
       ops=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 9),
                              st.sampled_from(["keep", "free", "free", "destroy"])), max_size=30))
def test_bulk_fresh_allocation_equals_the_general_path(capacity, ops):
    assert run(KvManager, capacity, ops) == run(GeneralOnly, capacity, ops)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(4, 40), decode=st.integers(1, 12),
       ops=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 9),
                              st.sampled_from(["keep", "free", "free", "destroy"])), max_size=30))
def test_decode_fast_paths_equal_the_general_path(capacity, decode, ops):
    assert run(KvManager, capacity, ops, decode) == run(GeneralOnly, capacity, ops, decode)
