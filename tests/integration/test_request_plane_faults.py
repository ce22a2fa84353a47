"""TCP request plane under network faults: connects that never complete, peers that vanish silently."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from dynamo.runtime import errors
from dynamo.runtime.request_plane.tcp import TcpClient

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A loopback address whose TCP handshake never completes: a listener with its backlog full.

    The listener never accepts, so once the queue holds its one pending connection the kernel drops
    further SYNs and a connect hangs until the caller's timeout.
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        yield f"127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        srv.close()


async def test_cancelled_connect_does_not_strand_other_waiters(monkeypatch):
    monkeypatch.setenv("DYN_TCP_CONNECT_TIMEOUT", "1.0")
    client = TcpClient()
    with blackhole() as addr:
        first = asyncio.ensure_future(client.request(addr, "x/ns.c.e", {}))
        await asyncio.sleep(0.1)  # first is now the one opening the connection
        second = asyncio.ensure_future(client.request(addr, "x/ns.c.e", {}))
        await asyncio.sleep(0.1)
        first.cancel()
        start = time.monotonic()
        with pytest.raises(errors.CannotConnect):
            # Before the fix the second waiter waited forever on a future nobody would resolve.
            await asyncio.wait_for(second, 5)
        assert time.monotonic() - start < 3
        with pytest.raises(asyncio.CancelledError):
            await first
    await client.close()


async def test_connect_to_blackhole_times_out(monkeypatch):
    monkeypatch.setenv("DYN_TCP_CONNECT_TIMEOUT", "0.5")
    client = TcpClient()
    with blackhole() as addr:
        start = time.monotonic()
        with pytest.raises(errors.CannotConnect):
            await client.request(addr, "x/ns.c.e", {})
        assert time.monotonic() - start < 2
    await client.close()
