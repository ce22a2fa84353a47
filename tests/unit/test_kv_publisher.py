import msgspec
import pytest

from dynamo.kv_router.hashing import compute_block_hashes
from dynamo.kv_router.indexer import RadixTree
from dynamo.kv_router.protocols import KvCleared, KvRemoved, KvStored
from dynamo.kv_router.publisher import EventIds, ZmqKvEventBridge, convert_batch, storage_tier

pytestmark = pytest.mark.unit


def test_vllm_map_events_convert_with_router_hashes():
    tokens = list(range(32))
    batch = [1.5, [
        {"type": "BlockStored", "block_hashes": [-5, 11], "parent_block_hash": None, "token_ids": tokens,
         "block_size": 16, "medium": "GPU"},
        {"type": "BlockRemoved", "block_hashes": [11]},
        {"type": "AllBlocksCleared"},
    ], 1]
    events = convert_batch(batch, worker_id=9, ids=EventIds())
    stored = events[0].event.data
    assert isinstance(stored, KvStored)
    assert [b.block_hash for b in stored.blocks] == [(1 << 64) - 5, 11]
    assert [b.tokens_hash for b in stored.blocks] == compute_block_hashes(tokens, 16)
    assert isinstance(events[1].event.data, KvRemoved) and isinstance(events[2].event.data, KvCleared)
    assert [e.event.event_id for e in events] == [0, 1, 2]
    assert all(e.event.dp_rank == 1 and e.worker_id == 9 for e in events)


def test_array_encoded_events_lora_and_tiers():
    tokens = list(range(16))
    batch = [0.0, [["BlockStored", [7], 3, tokens, 16, None, "CPU_TIER1", "my-lora"]], None]
    (event,) = convert_batch(batch, 1, EventIds())
    assert event.storage_tier == "host_pinned"
    assert event.event.data.parent_hash == 3
    assert event.event.data.blocks[0].tokens_hash == compute_block_hashes(tokens, 16, "my-lora")[0]
    assert storage_tier(None) == "device" and storage_tier("nvme") == "disk" and storage_tier("weird") == "device"


def test_bridge_feeds_an_indexer_and_skips_garbage():
    tree = RadixTree()
    published = []

    def publish(ev):
        published.append(ev)
        tree.apply_event(ev)

    bridge = ZmqKvEventBridge("tcp://127.0.0.1:1", worker_id=4, publish=publish)
    tokens = list(range(48))
    ok = msgspec.msgpack.encode([0.0, [{"type": "BlockStored", "block_hashes": [1, 2, 3], "parent_block_hash": None,
                                        "token_ids": tokens, "block_size": 16}], 0])
    assert len(bridge.handle(ok)) == 1
    assert bridge.handle(b"\xc1garbage") == [] and bridge.handle(msgspec.msgpack.encode([1])) == []
    assert bridge.invalid == 2
    assert tree.find_matches(compute_block_hashes(tokens, 16)).scores == {(4, 0): 3}
