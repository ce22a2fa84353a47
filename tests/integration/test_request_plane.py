"""The request planes (tcp, nats, http) against real sockets and a real nats-server: long streams,
stop/kill, admission, lost servers, hostile bytes. Every test of the battery runs on each plane."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import msgspec
import pytest

from dynamo.runtime import DistributedRuntime, RequestContext, errors
from dynamo.runtime.request_plane.codec import MAX_FRAME_BYTES
from tests.integration.nats_fixtures import nats_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

PLANES = ["tcp", "nats", "http"]


@pytest.fixture(params=PLANES)
def plane(request, monkeypatch) -> str:
    if request.param == "nats":
        server = request.getfixturevalue("nats_server")
        monkeypatch.setenv("NATS_SERVER", server.url)
    return request.param


@pytest.fixture
async def pair(plane):
    server = await DistributedRuntime.create("mem", request_plane=plane)
    client_rt = await DistributedRuntime.create("mem")
    yield server, client_rt
    await client_rt.shutdown(grace_period=0)
    await server.shutdown(grace_period=0)


async def _serve(rt, handler, name="generate"):
    ep = rt.namespace("rp").component("svc").endpoint(name)
    served = await ep.start_serving(handler)
    return ep, served


async def count_handler(request, ctx: RequestContext):
    for i in range(request["n"]):
        yield i


async def test_ten_thousand_items_in_order(pair):
    server, client_rt = pair
    await _serve(server, count_handler)
    client = await client_rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    stream = await client.round_robin({"n": 10_000})
    assert [x async for x in stream] == list(range(10_000))


async def test_stop_from_client_ends_handler(pair):
    server, client_rt = pair
    ended = asyncio.Event()
    produced = []

    async def endless(request, ctx):
        try:
            i = 0
            while not ctx.is_stopped():
                produced.append(i)
                yield i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            ended.set()

    _, served = await _serve(server, endless)
    client = await client_rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    stream = await client.round_robin({})
    got = [await stream.__anext__() for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]
    stream.cancel()
    await asyncio.wait_for(ended.wait(), 5)
    await asyncio.wait_for(served.wait_idle(), 5)
    assert served.inflight() == 0


async def test_kill_from_client_aborts_blocked_handler(pair):
    server, client_rt = pair
    cancelled = asyncio.Event()

    async def blocked(request, ctx):
        yield "first"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    _, served = await _serve(server, blocked)
    client = await client_rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    stream = await client.round_robin({})
    assert await stream.__anext__() == "first"
    stream.cancel(kill=True)
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.wait_for(served.wait_idle(), 5)


async def test_handler_errors_reach_client_typed(pair):
    server, client_rt = pair

    async def bad(request, ctx):
        yield 1
        raise errors.InvalidArgument("max_tokens is required")

    async def crash(request, ctx):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    await _serve(server, bad, "bad")
    await _serve(server, crash, "crash")
    c1 = await client_rt.endpoint("rp.svc.bad").client()
    c2 = await client_rt.endpoint("rp.svc.crash").client()
    await c1.wait_for_instances(5)
    await c2.wait_for_instances(5)
    stream = await c1.round_robin({})
    assert await stream.__anext__() == 1
    with pytest.raises(errors.InvalidArgument, match="max_tokens"):
        await stream.__anext__()
    stream = await c2.round_robin({})
    with pytest.raises(errors.Internal, match="boom"):
        await stream.__anext__()


async def test_pool_and_queue_sizes_from_env_bound_admission(tmp_path, monkeypatch, plane):
    # The sizes reach the server the way an operator sets them: environment of a separate process.
    from pathlib import Path

    from tests.support.procs import processes

    worker = str(Path(__file__).with_name("runtime_worker.py"))
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    env = {"DYN_TCP_WORKER_POOL_SIZE": "1", "DYN_TCP_WORK_QUEUE_SIZE": "1"}
    with processes(env) as procs:
        procs.spawn(worker, "--store", "file", "--request-plane", plane)
        rt = await DistributedRuntime.create("file")
        try:
            client = await rt.endpoint("dyn://test.worker.generate").client()
            await client.wait_for_instances(20)
            assert list(client.instances()[0].transport) == [plane]
            running = await client.round_robin({"n": 3, "delay": 0.3})
            queued = await client.round_robin({"n": 1})
            # One handler runs, one waits in the queue: the third is refused before any data.
            with pytest.raises(errors.ResourceExhausted, match="overloaded"):
                await client.round_robin({"n": 1})
            order = []

            async def consume(name, stream):
                async for _ in stream:
                    pass
                order.append(name)

            await asyncio.wait_for(asyncio.gather(consume("running", running), consume("queued", queued)), 10)
            # A pool of one: the queued request started only when the running one finished.
            assert order == ["running", "queued"]
            after = await client.round_robin({"n": 2})
            assert [x["i"] async for x in after] == [0, 1]
        finally:
            await rt.shutdown(grace_period=0)


async def test_server_killed_fails_open_streams_with_disconnected(tmp_path, plane, monkeypatch):
    # Server in a subprocess so it can be SIGKILLed for real.
    from pathlib import Path

    from tests.support.procs import processes

    worker = str(Path(__file__).with_name("runtime_worker.py"))
    env = {"DYN_FILE_KV": str(tmp_path / "kv")}
    os.environ["DYN_FILE_KV"] = env["DYN_FILE_KV"]
    try:
        with processes(env) as procs:
            proc = procs.spawn(worker, "--store", "file", "--request-plane", plane)
            rt = await DistributedRuntime.create("file")
            try:
                client = await rt.endpoint("dyn://test.worker.generate").client()
                await client.wait_for_instances(20)
                streams = [await client.round_robin({"n": 1000, "delay": 0.01}) for _ in range(3)]
                for s in streams:
                    await s.__anext__()
                procs.stop(proc, 9)
                for s in streams:
                    with pytest.raises(errors.Disconnected):
                        async for _ in s:
                            pass
                assert client.instance_ids() == []
            finally:
                await rt.shutdown(grace_period=0)
    finally:
        del os.environ["DYN_FILE_KV"]


@pytest.fixture
async def tcp_pair():
    server = await DistributedRuntime.create("mem")
    client_rt = await DistributedRuntime.create("mem")
    yield server, client_rt
    await client_rt.shutdown(grace_period=0)
    await server.shutdown(grace_period=0)


async def test_unknown_endpoint_raw_tcp_frame(tcp_pair):
    server, _ = tcp_pair
    await _serve(server, count_handler)
    from dynamo.runtime.request_plane.codec import Frame, encode_frame

    frame = encode_frame(Frame("req", 1, ep="ffff/nope.nope.nope", body=msgspec.Raw(msgspec.msgpack.encode({}))))
    reply = await _raw_first(server.tcp_server.address, frame)
    assert b"NotFound" in reply


async def _raw(addr: str, payload: bytes) -> bytes:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data


@pytest.mark.parametrize(
    "payload",
    [
        os.urandom(4096),
        struct.pack(">I", 100) + b"\x81\xa1t",  # truncated frame, then EOF
        struct.pack(">I", 1 << 30) + b"x" * 16,  # 1 GiB length prefix
        struct.pack(">I", MAX_FRAME_BYTES + 1),
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # invalid msgpack
        struct.pack(">I", 1) + b"\x05",  # valid msgpack, not a frame
    ],
    ids=["random", "truncated", "1GiB", "over-limit", "bad-msgpack", "not-a-frame"],
)
async def test_hostile_bytes_close_only_that_connection(tcp_pair, payload):
    server, client_rt = tcp_pair
    release = asyncio.Event()

    async def gated(request, ctx):
        yield 0
        await release.wait()
        yield 1
        yield 2

    await _serve(server, gated)
    client = await client_rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    # A healthy connection with a stream in flight while another connection attacks.
    in_flight = await client.round_robin({})
    assert await in_flight.__anext__() == 0
    addr = server.tcp_server.address
    healthy = client_rt.tcp_client._conns[addr]
    assert len(server.tcp_server.connections) == 1
    await _raw(addr, payload)  # returns once the server has closed the attacking connection
    release.set()
    assert [x async for x in in_flight] == [1, 2]
    assert client_rt.tcp_client._conns[addr] is healthy and not healthy.closed
    assert len(server.tcp_server.connections) == 1
    stream = await client.round_robin({})
    release.set()
    assert [x async for x in stream] == [0, 1, 2]
    assert client_rt.tcp_client._conns[addr] is healthy


async def test_unknown_endpoint_and_bad_body(pair):
    server, client_rt = pair
    _, served = await _serve(server, count_handler)
    plane_client = await client_rt.request_client(server.request_plane)
    with pytest.raises(errors.NotFound, match="unknown endpoint"):
        await plane_client.request(served.instance.address, "ffff/nope.nope.nope", {})
    # A request whose body the handler cannot use fails that stream only.
    stream = await (await _client(client_rt)).round_robin({"wrong": "shape"})
    with pytest.raises(errors.DynamoError):
        async for _ in stream:
            pass
    stream = await (await _client(client_rt)).round_robin({"n": 2})
    assert [x async for x in stream] == [0, 1]


async def _client(rt):
    client = await rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    return client


async def _raw_first(addr: str, payload: bytes) -> bytes:
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock.sendall(payload)
        return await asyncio.to_thread(sock.recv, 65536)
    finally:
        sock.close()


async def test_cannot_connect_marks_instance_down(pair):
    server, client_rt = pair
    await _serve(server, count_handler)
    client = await client_rt.endpoint("rp.svc.generate").client()
    await client.wait_for_instances(5)
    await server.server.close()
    await asyncio.sleep(0)
    with pytest.raises((errors.CannotConnect, errors.Disconnected)):
        stream = await client.round_robin({"n": 1})
        async for _ in stream:
            pass
    assert client.instance_ids() == []


async def test_wildcard_bind_advertises_a_routable_address(monkeypatch):
    # Bound on every interface, the worker must advertise an address other hosts can dial, never
    # 0.0.0.0 (which each client would read as "myself").
    monkeypatch.setenv("DYN_TCP_RPC_HOST", "0.0.0.0")
    server = await DistributedRuntime.create("mem")
    client_rt = await DistributedRuntime.create("mem")
    try:
        _, served = await _serve(server, count_handler)
        host = served.instance.address.rsplit(":", 1)[0]
        assert host not in ("0.0.0.0", "", "*", "::")
        assert server.tcp_server.bind_address.startswith("0.0.0.0:")
        client = await _client(client_rt)
        stream = await client.round_robin({"n": 2})
        assert [x async for x in stream] == [0, 1]
    finally:
        await client_rt.shutdown(grace_period=0)
        await server.shutdown(grace_period=0)


async def test_advertise_host_override(monkeypatch):
    # Behind NAT or with several interfaces the operator names the address to publish.
    monkeypatch.setenv("DYN_TCP_RPC_HOST", "0.0.0.0")
    monkeypatch.setenv("DYN_TCP_RPC_ADVERTISE_HOST", "localhost")
    server = await DistributedRuntime.create("mem")
    client_rt = await DistributedRuntime.create("mem")
    try:
        _, served = await _serve(server, count_handler)
        assert served.instance.address == f"localhost:{server.tcp_server.port}"
        stream = await (await _client(client_rt)).round_robin({"n": 1})
        assert [x async for x in stream] == [0]
    finally:
        await client_rt.shutdown(grace_period=0)
        await server.shutdown(grace_period=0)


# -- hostile input on the nats and http planes ---------------------------------------------------


@pytest.fixture
async def nats_pair(nats_server, monkeypatch):  # noqa: F811  (fixture)
    monkeypatch.setenv("NATS_SERVER", nats_server.url)
    server = await DistributedRuntime.create("mem", request_plane="nats")
    client_rt = await DistributedRuntime.create("mem")
    yield server, client_rt
    await client_rt.shutdown(grace_period=0)
    await server.shutdown(grace_period=0)


async def test_nats_hostile_messages_are_dropped_and_streams_go_on(nats_pair):
    from dynamo.runtime.request_plane.codec import Frame

    server, client_rt = nats_pair
    release = asyncio.Event()

    async def gated(request, ctx):
        yield 0
        await release.wait()
        yield 1

    _, served = await _serve(server, gated)
    client = await _client(client_rt)
    in_flight = await client.round_robin({})
    assert await in_flight.__anext__() == 0
    nc = await client_rt.nats_connection()
    hostile = [os.urandom(512), b"\xc1\xc1", msgspec.msgpack.encode(5),
               msgspec.msgpack.encode(Frame("pong", 0)), msgspec.msgpack.encode(Frame("req", 9, ep="x"))]
    for payload in hostile:
        await nc.publish(served.instance.address, payload)
    await nc.flush()
    await _wait_until(lambda: server.server.malformed >= 4)
    release.set()
    assert [x async for x in in_flight] == [1]
    assert [x async for x in await client.round_robin({})] == [0, 1]


@pytest.fixture
async def http_pair():
    server = await DistributedRuntime.create("mem", request_plane="http")
    client_rt = await DistributedRuntime.create("mem")
    yield server, client_rt
    await client_rt.shutdown(grace_period=0)
    await server.shutdown(grace_period=0)


async def test_http_hostile_requests_get_typed_refusals(http_pair):
    import httpx

    from dynamo.runtime.request_plane.codec import Frame, decode_frame, encode_frame

    server, client_rt = http_pair
    release = asyncio.Event()

    async def gated(request, ctx):
        yield 0
        await release.wait()
        yield 1

    _, served = await _serve(server, gated)
    client = await _client(client_rt)
    in_flight = await client.round_robin({})
    assert await in_flight.__anext__() == 0
    base = served.instance.address
    async with httpx.AsyncClient(timeout=5) as http:
        cases = [
            (os.urandom(300), 400),
            (b"\xc1\xc1", 400),
            (msgspec.msgpack.encode(Frame("kill", 1)), 400),
            (encode_frame(Frame("req", 1, ep="ffff/no.such.ep", body=msgspec.Raw(b"\x80")))[4:], 404),
        ]
        for body, status in cases:
            resp = await http.post(f"{base}/x", content=body)
            assert resp.status_code == status
            err = decode_frame(resp.content[4:])
            assert err.t == "err" and err.error["type"] in ("InvalidArgument", "NotFound")
        assert (await http.get(f"{base}/x")).status_code == 405
        assert (await http.post(f"{base}/_control/nope", content=b"stop")).status_code == 404
        assert (await http.post(f"{base}/_control/nope", content=b"explode")).status_code == 400
        resp = await http.post(f"{base}/x", content=b"x" * (MAX_FRAME_BYTES + 10))
        assert resp.status_code == 413
    release.set()
    assert [x async for x in in_flight] == [1]


async def _wait_until(predicate, timeout: float = 5.0) -> None:
    from tests.support.procs import async_wait_for

    await async_wait_for(predicate, timeout=timeout)
