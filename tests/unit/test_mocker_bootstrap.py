"""The mocker's KV bootstrap rendezvous over real loopback sockets."""

from __future__ import annotations

import asyncio
import json

from dynamo.llm.protocols.engine import BootstrapInfo
from dynamo.mocker.bootstrap import BootstrapServer, wait_for_kv


async def started(**kw: float) -> BootstrapServer:
    server = BootstrapServer("127.0.0.1", 0, **kw)
    await server.start()
    return server


async def test_either_side_may_arrive_first() -> None:
    server = await started()
    try:
        # decode first: it waits until the prefill side announces and completes the room
        waiter = asyncio.create_task(wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 1)))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        server.expect(1)
        server.complete(1)
        assert await waiter == (True, "ready")
        # prefill first: the room is already complete when the decode side asks
        server.expect(2)
        server.complete(2)
        assert await wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 2)) == (True, "ready")
        assert server.rooms == {}  # claimed rooms are forgotten
    finally:
        await server.close()


async def test_failures_tell_the_decode_side_to_prefill_locally() -> None:
    server = await started(announce_secs=0.2)
    try:
        server.expect(3)
        server.complete(3, ok=False)
        assert await wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 3)) == (False, "failed")
        # nobody ever announces room 4
        assert await wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 4)) == (False, "timeout")
        # the prefill worker shuts down while a decode worker waits
        server.expect(5)
        waiter = asyncio.create_task(wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 5)))
        await asyncio.sleep(0.05)
        await server.close()
        assert (await waiter)[0] is False
    finally:
        await server.close()
    # nothing listens any more
    ok, why = await wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 6))
    assert not ok and "Error" in why


async def test_garbage_gets_an_error_line_and_the_server_lives_on() -> None:
    server = await started()
    try:
        for junk in (b"not json\n", b'{"room": "x"}\n', b"[1, 2]\n", b"x" * 5000 + b"\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(junk)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            assert json.loads(line)["status"] == "error"
        server.expect(7)
        server.complete(7)
        assert await wait_for_kv(BootstrapInfo("127.0.0.1", server.port, 7)) == (True, "ready")
    finally:
        await server.close()


async def test_unclaimed_rooms_expire() -> None:
    server = await started(room_ttl_secs=0.2)
    try:
        server.expect(8)
        server.complete(8)
        for _ in range(100):
            if not server.rooms:
                break
            await asyncio.sleep(0.02)
        assert server.rooms == {}
    finally:
        await server.close()
