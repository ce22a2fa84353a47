"""The engine-native ZMQ KV event bridge over a real ZMQ socket."""

import asyncio

import msgspec
import pytest
import zmq
import zmq.asyncio

from dynamo.kv_router.publisher import ZmqKvEventBridge

pytestmark = pytest.mark.integration


async def test_bridge_receives_engine_batches_over_zmq():
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got = []
    bridge = ZmqKvEventBridge(f"tcp://127.0.0.1:{port}", worker_id=3, publish=got.append)
    bridge.start()
    batch = msgspec.msgpack.encode([0.0, [{"type": "BlockStored", "block_hashes": [5], "parent_block_hash": None,
                                           "token_ids": list(range(16)), "block_size": 16}], 0])
    try:
        async with asyncio.timeout(10):
            # ZMQ drops messages sent before the subscription lands: resend until one arrives.
            while not got:
                await pub.send_multipart([b"kv", (0).to_bytes(8, "big"), batch])
                await asyncio.sleep(0.05)
        assert got[0].worker_id == 3 and got[0].event.data.blocks[0].block_hash == 5
    finally:
        await bridge.close()
        pub.close(linger=0)


async def test_malformed_batch_does_not_end_the_bridge():
    # One record an engine (or anyone on the socket) gets wrong must not stop the worker's KV events.
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got = []
    bridge = ZmqKvEventBridge(f"tcp://127.0.0.1:{port}", worker_id=3, publish=got.append)
    bridge.start()
    # A float hash: decodes as msgpack, then fails the conversion with OverflowError.
    bad = msgspec.msgpack.encode([0.0, [{"type": "BlockRemoved", "block_hashes": [float("inf")]}], 0])
    good = msgspec.msgpack.encode([0.0, [{"type": "BlockRemoved", "block_hashes": [7]}], 0])
    try:
        async with asyncio.timeout(10):
            while not bridge.invalid:
                await pub.send_multipart([b"kv", (0).to_bytes(8, "big"), bad])
                await asyncio.sleep(0.05)
            while not got:
                await pub.send_multipart([b"kv", (1).to_bytes(8, "big"), good])
                await asyncio.sleep(0.05)
        assert got[0].event.data.block_hashes == [7]
    finally:
        await bridge.close()
        pub.close(linger=0)
