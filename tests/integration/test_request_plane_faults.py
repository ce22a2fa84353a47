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
from tests.integration.nats_fixtures import nats_server  # noqa: F401  (fixture)

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


# -- silent peers: the heartbeat ------------------------------------------------------------------

HEARTBEAT_ENV = {"DYN_TCP_HEARTBEAT_SECS": "0.2", "DYN_TCP_HEARTBEAT_TIMEOUT_SECS": "1.0"}
# timeout + one interval, plus slack for a loaded test machine
DETECT_BOUND_SECS = 1.0 + 0.2 + 1.5


@pytest.fixture
def fast_heartbeat(monkeypatch):
    for k, v in HEARTBEAT_ENV.items():
        monkeypatch.setenv(k, v)


async def test_frozen_server_fails_open_streams_with_disconnected(tmp_path, monkeypatch, fast_heartbeat):
    # SIGSTOP freezes the worker but its kernel keeps ACKing: no FIN, no RST, reads never return.
    # Only the heartbeat can tell this apart from a slow stream.
    import signal
    from pathlib import Path

    from dynamo.runtime import DistributedRuntime
    from tests.support.procs import processes

    worker = str(Path(__file__).with_name("runtime_worker.py"))
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    with processes(HEARTBEAT_ENV) as procs:
        proc = procs.spawn(worker, "--store", "file")
        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://test.worker.generate").client()
            await client.wait_for_instances(20)
            streams = [await client.round_robin({"n": 10_000, "delay": 0.05}) for _ in range(2)]
            for s in streams:
                await s.__anext__()
            proc.send_signal(signal.SIGSTOP)
            start = time.monotonic()

            async def drain(s):
                async for _ in s:
                    pass

            for s in streams:
                with pytest.raises(errors.Disconnected, match="heartbeat"):
                    await asyncio.wait_for(drain(s), 10)
            assert time.monotonic() - start < DETECT_BOUND_SECS
            # The instance is set aside at once, as for any lost connection (its lease file is still
            # fresh: the store alone would keep routing to it).
            assert client.instance_ids() == []
        finally:
            proc.send_signal(signal.SIGCONT)
            await rt.shutdown(grace_period=0)


async def test_silent_client_has_its_handlers_cancelled(fast_heartbeat):
    # A client that sends a request and then goes silent (never answers pings) must not keep a
    # handler generating for nobody.
    from dynamo.runtime import DistributedRuntime
    from dynamo.runtime.client import endpoint_path
    from dynamo.runtime.request_plane.codec import Frame, encode_body, encode_frame

    rt = await DistributedRuntime.create("mem")
    cancelled = asyncio.Event()

    async def forever(request, ctx):
        yield "first"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        served = await rt.namespace("hb").component("svc").endpoint("gen").start_serving(forever)
        host, port = rt.tcp_server.address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        try:
            sock.sendall(encode_frame(Frame("req", 1, ep=endpoint_path(served.instance), body=encode_body({}))))
            start = time.monotonic()
            await asyncio.wait_for(cancelled.wait(), 10)
            assert time.monotonic() - start < DETECT_BOUND_SECS
            await asyncio.wait_for(served.wait_idle(), 5)
        finally:
            sock.close()
    finally:
        await rt.shutdown(grace_period=0)


async def test_idle_but_healthy_stream_is_not_killed(fast_heartbeat):
    # Gaps between items longer than the heartbeat timeout are fine while the peer answers pings.
    from dynamo.runtime import DistributedRuntime

    server = await DistributedRuntime.create("mem")
    client_rt = await DistributedRuntime.create("mem")

    async def slow(request, ctx):
        for i in range(2):
            await asyncio.sleep(1.6)  # > DYN_TCP_HEARTBEAT_TIMEOUT_SECS
            yield i

    try:
        await server.namespace("hb").component("svc").endpoint("gen").start_serving(slow)
        client = await client_rt.endpoint("hb.svc.gen").client()
        await client.wait_for_instances(5)
        stream = await client.round_robin({})
        assert [x async for x in stream] == [0, 1]
        assert client.instance_ids() != []
    finally:
        await client_rt.shutdown(grace_period=0)
        await server.shutdown(grace_period=0)


def test_heartbeat_settings_from_env(monkeypatch):
    from dynamo.runtime.request_plane.heartbeat import HeartbeatSettings

    monkeypatch.delenv("DYN_TCP_HEARTBEAT_SECS", raising=False)
    monkeypatch.delenv("DYN_TCP_HEARTBEAT_TIMEOUT_SECS", raising=False)
    default = HeartbeatSettings.from_env()
    assert default.enabled and default.timeout + default.interval <= 10
    monkeypatch.setenv("DYN_TCP_HEARTBEAT_SECS", "0")
    assert not HeartbeatSettings.from_env().enabled
    monkeypatch.setenv("DYN_TCP_HEARTBEAT_SECS", "2")
    monkeypatch.setenv("DYN_TCP_HEARTBEAT_TIMEOUT_SECS", "1")
    with pytest.raises(errors.ConfigError, match="must exceed"):
        HeartbeatSettings.from_env()


@pytest.mark.parametrize("plane", ["nats", "http"])
async def test_frozen_server_on_nats_and_http_fails_streams_with_disconnected(
        tmp_path, monkeypatch, fast_heartbeat, plane, request):
    # The same silent-peer guarantee as TCP: NATS pings go unanswered, the HTTP stream goes quiet.
    import signal
    from pathlib import Path

    from dynamo.runtime import DistributedRuntime
    from tests.support.procs import processes

    if plane == "nats":
        monkeypatch.setenv("NATS_SERVER", request.getfixturevalue("nats_server").url)
    worker = str(Path(__file__).with_name("runtime_worker.py"))
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    with processes(HEARTBEAT_ENV) as procs:
        proc = procs.spawn(worker, "--store", "file", "--request-plane", plane)
        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://test.worker.generate").client()
            await client.wait_for_instances(20)
            streams = [await client.round_robin({"n": 10_000, "delay": 0.05}) for _ in range(2)]
            for s in streams:
                await s.__anext__()
            proc.send_signal(signal.SIGSTOP)
            start = time.monotonic()

            async def drain(s):
                async for _ in s:
                    pass

            for s in streams:
                with pytest.raises(errors.Disconnected, match="heartbeat"):
                    await asyncio.wait_for(drain(s), 10)
            assert time.monotonic() - start < DETECT_BOUND_SECS
            assert client.instance_ids() == []
        finally:
            proc.send_signal(signal.SIGCONT)
            await rt.shutdown(grace_period=0)
