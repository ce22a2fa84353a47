import msgspec
import pytest

from dynamo.kv_router.protocols import (
    KvCacheEvent,
    KvCleared,
    KvRemoved,
    KvStored,
    RouterEvent,
    StoredBlock,
    decode_router_event,
)

pytestmark = pytest.mark.unit

EVENTS = [
    RouterEvent(5, KvCacheEvent(0, KvStored(None, [StoredBlock(1, 2), StoredBlock(3, 4)]), 1)),
    RouterEvent(5, KvCacheEvent(1, KvStored(3, [StoredBlock((1 << 64) - 1, 9)]))),
    RouterEvent(6, KvCacheEvent(2, KvRemoved([1, 3])), "host_pinned"),
    RouterEvent(6, KvCacheEvent(3, KvCleared())),
]


@pytest.mark.parametrize("event", EVENTS)
def test_wire_round_trip_both_decoders(event):
    wire = event.to_wire()
    assert RouterEvent.from_wire(wire) == event
    assert decode_router_event(msgspec.msgpack.encode(wire)) == event


def test_signed_hashes_are_reinterpreted_as_unsigned():
    payload = msgspec.msgpack.encode({"worker_id": 1, "event": {"event_id": 0, "data": {"removed": {"block_hashes": [-1]}}}})
    assert decode_router_event(payload).event.data.block_hashes == [(1 << 64) - 1]


@pytest.mark.parametrize("payload", [
    b"\xc1",
    msgspec.msgpack.encode({"worker_id": 1}),
    msgspec.msgpack.encode({"worker_id": 1, "event": {"event_id": 0, "data": "bogus"}}),
    msgspec.msgpack.encode({"worker_id": 1, "event": {"event_id": 0, "data": {}}}),
    msgspec.msgpack.encode({"worker_id": "x", "event": {"event_id": 0, "data": "cleared"}}),
])
def test_malformed_payloads_raise_value_error(payload):
    with pytest.raises(ValueError):
        decode_router_event(payload)
