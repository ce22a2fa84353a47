"""Two worker processes, a client in the test process, on each discovery store."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import pytest

from dynamo.runtime import DistributedRuntime, errors
from tests.support.procs import async_wait_for, processes

pytestmark = pytest.mark.integration

WORKER = str(Path(__file__).with_name("runtime_worker.py"))


@pytest.fixture(params=["file", "etcd"])
def store_env(request, tmp_path, monkeypatch):
    if request.param == "file":
        monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
        return "file", {"DYN_FILE_KV": str(tmp_path / "kv")}
    etcd = request.getfixturevalue("etcd_server")
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.url)
    return "etcd", {"ETCD_ENDPOINTS": etcd.url}


async def _gone(runtime, prefix, iid):
    keys = await runtime.store.get_prefix(prefix)
    return f"{prefix}{iid:x}" not in keys


async def _collect(client, request):
    stream = await client.round_robin(request)
    return [item async for item in stream]


async def test_round_robin_kill_and_restart(store_env, tmp_path):
    store, env = store_env
    with processes(env) as procs:
        ready = [tmp_path / f"ready{i}" for i in range(3)]
        workers = [procs.spawn(WORKER, "--store", store, "--ready-file", str(ready[i])) for i in range(2)]
        runtime = await DistributedRuntime.create(store)
        try:
            client = await runtime.endpoint("dyn://test.worker.generate").client()
            ids = await client.wait_for_instances(timeout=20, count=2)
            assert len(ids) == 2

            counts: collections.Counter[int] = collections.Counter()
            for _ in range(100):
                items = await _collect(client, {"n": 3})
                assert [it["i"] for it in items] == [0, 1, 2]
                counts[items[0]["instance"]] += 1
            assert set(counts) == set(ids)
            assert counts[ids[0]] == counts[ids[1]] == 50

            victim_id = int(ready[0].read_text())
            procs.stop(workers[0], signal.SIGKILL)
            t0 = time.monotonic()
            await async_wait_for(lambda: victim_id not in client.instance_ids(), 15, what="instance removal")
            assert time.monotonic() - t0 < 15
            # The store itself forgets the dead worker once its lease/TTL runs out.
            prefix = "v1/instances/test/worker/generate/"
            await async_wait_for(
                lambda: _gone(runtime, prefix, victim_id), 15, interval=0.2, what="store expiry")
            assert time.monotonic() - t0 < 15
            for _ in range(20):
                items = await _collect(client, {"n": 1})
                assert items[0]["instance"] != victim_id

            procs.spawn(WORKER, "--store", store, "--ready-file", str(ready[2]))
            await async_wait_for(lambda: ready[2].exists() and ready[2].read_text().strip(), 20, what="restart")
            new_id = int(ready[2].read_text())
            await async_wait_for(lambda: new_id in client.instance_ids(), 15, what="new instance")
            seen = {(await _collect(client, {"n": 1}))[0]["instance"] for _ in range(10)}
            assert new_id in seen and victim_id not in seen
            await client.close()
        finally:
            await runtime.shutdown(grace_period=0)


async def test_graceful_shutdown_drains_inflight(tmp_path, monkeypatch):
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "kv"))
    env = {"DYN_FILE_KV": str(tmp_path / "kv"), "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "10"}
    with processes(env) as procs:
        worker = procs.spawn(WORKER, "--store", "file")
        runtime = await DistributedRuntime.create("file")
        try:
            client = await runtime.endpoint("dyn://test.worker.generate").client()
            (iid,) = await client.wait_for_instances(timeout=20)
            stream = await client.round_robin({"n": 20, "delay": 0.05})
            first = await stream.__anext__()
            worker.send_signal(signal.SIGTERM)
            # Unregistered at once: the instance leaves discovery while its stream still runs.
            await async_wait_for(lambda: iid not in client.instance_ids(), 5, what="unregistration")
            rest = [item async for item in stream]
            assert [first["i"], *[r["i"] for r in rest]] == list(range(20))
            assert await asyncio.to_thread(worker.wait, 15) == 0
            with pytest.raises(errors.Unavailable):
                await client.round_robin({"n": 1})
        finally:
            await runtime.shutdown(grace_period=0)
