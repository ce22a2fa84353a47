"""The runtime on the in-process ``mem`` store: two serving runtimes, one client runtime."""

from __future__ import annotations

import collections

import pytest

from dynamo.runtime import DistributedRuntime, errors
from dynamo.runtime.naming import EndpointId
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.integration


async def test_round_robin_and_removal_on_mem_store():
    workers = [await DistributedRuntime.create("mem") for _ in range(2)]
    client_rt = await DistributedRuntime.create("mem")
    try:
        for rt in workers:
            iid = rt.instance_id

            async def handler(request, ctx, iid=iid):
                yield {"instance": iid, "echo": request}

            await rt.endpoint("dyn://memtest.worker.generate").start_serving(handler)
        client = await client_rt.endpoint("memtest/worker/generate").client()
        ids = await client.wait_for_instances(5, count=2)
        counts = collections.Counter()
        for i in range(100):
            stream = await client.round_robin({"k": i})
            item = await anext(aiter(stream))
            assert item["echo"] == {"k": i}
            counts[item["instance"]] += 1
        assert sorted(counts.values()) == [50, 50] and set(counts) == set(ids)

        stream = await client.direct({"k": "d"}, ids[1])
        assert (await anext(aiter(stream)))["instance"] == ids[1]
        with pytest.raises(errors.NotFound):
            await client.direct({}, 12345)

        await workers[0].shutdown(grace_period=0)
        await async_wait_for(lambda: client.instance_ids() == [workers[1].instance_id], 5, what="removal")
        for _ in range(10):
            stream = await client.random({})
            assert (await anext(aiter(stream)))["instance"] == workers[1].instance_id
    finally:
        for rt in [*workers, client_rt]:
            await rt.shutdown(grace_period=0)


def test_endpoint_id_parsing():
    assert EndpointId.parse("dyn://ns.comp.ep") == ("ns", "comp", "ep")
    assert EndpointId.parse("ns/comp/ep").as_url() == "dyn://ns.comp.ep"
    assert EndpointId.parse(" /ns.comp./") == ("ns", "comp", "E")
    assert EndpointId.parse("comp") == ("NS", "comp", "E")
    assert EndpointId.parse("a.b.c.d") == ("a", "b", "c_d")
    assert str(EndpointId.parse("dyn://a.b.c")) == "a/b/c"


async def test_unknown_request_plane_is_a_clear_error():
    with pytest.raises(errors.ConfigError, match="unknown request plane 'carrier-pigeon'"):
        await DistributedRuntime.create("mem", request_plane="carrier-pigeon")


async def test_from_settings_without_config_reads_the_environment(monkeypatch, tmp_path):
    # DESIGN §3: ``DistributedRuntime.from_settings()`` with no argument is configured by DYN_* variables.
    monkeypatch.setenv("DYN_STORE_KV", "mem")
    monkeypatch.setenv("DYN_REQUEST_PLANE", "HTTP")
    monkeypatch.setenv("DYN_EVENT_PLANE", "zmq")
    rt = await DistributedRuntime.from_settings()
    try:
        assert (type(rt.store).__name__, rt.request_plane, rt.event_plane_kind) == ("MemoryStore", "http", "zmq")
    finally:
        await rt.shutdown(grace_period=0)
    monkeypatch.delenv("DYN_STORE_KV")
    monkeypatch.delenv("DYN_REQUEST_PLANE")
    monkeypatch.delenv("DYN_EVENT_PLANE")
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    rt = await DistributedRuntime.from_settings()
    try:
        assert (type(rt.store).__name__, rt.request_plane, rt.event_plane_kind) == ("FileStore", "tcp", "zmq")
    finally:
        await rt.shutdown(grace_period=0)
