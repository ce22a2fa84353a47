import pytest

from dynamo.kv_router.indexer import RadixTree
from dynamo.kv_router.protocols import KvCacheEvent, KvStored, RouterEvent, StoredBlock
from dynamo.kv_router.recovery import newer_than, parse_dump

pytestmark = pytest.mark.unit


def test_snapshot_round_trip_rebuilds_the_same_index():
    worker = RadixTree()
    events = [
        RouterEvent(7, KvCacheEvent(0, KvStored(None, [StoredBlock(1, 11), StoredBlock(2, 12)]))),
        RouterEvent(7, KvCacheEvent(1, KvStored(2, [StoredBlock(3, 13)]))),
        RouterEvent(7, KvCacheEvent(0, KvStored(None, [StoredBlock(9, 11)]), dp_rank=1)),
    ]
    for ev in events:
        worker.apply_event(ev)
    reply = {"last_event_ids": {"0": 1, "1": 0}, "events": [e.to_wire() for e in worker.dump_events()]}
    last, dumped = parse_dump(reply)
    router = RadixTree()
    for ev in dumped:
        assert router.apply_event(ev) == "ok"
    assert router.find_matches([11, 12, 13]).scores == worker.find_matches([11, 12, 13]).scores == {(7, 0): 3, (7, 1): 1}
    assert last == {0: 1, 1: 0}
    assert not newer_than(events[1], last) and newer_than(RouterEvent(7, KvCacheEvent(2, KvStored(3, []))), last)


@pytest.mark.parametrize("reply", [None, [1], {"events": [{"bogus": 1}]}])
def test_malformed_snapshots_raise_value_error(reply):
    with pytest.raises(ValueError):
        parse_dump(reply)
