"""Model files through a real discovery store (etcd from the fixture, and the file store).

Two workers serve one model; a frontend with no access to their folder fetches the files; the
chunks outlive the first worker (the second rewrites what left with its lease) and go with the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dynamo.llm.model_files import (
    ModelFilesKeeper,
    describe_model_files,
    fetch_model_files,
    publish_model_files,
)
from dynamo.runtime.discovery import registry
from dynamo.runtime.discovery.etcd import EtcdStore
from dynamo.runtime.discovery.file import FileStore
from dynamo.runtime.discovery.store import KeyValueStore
from tests.support.procs import SHARED_DATA, async_wait_for

pytestmark = pytest.mark.integration

QWEN = SHARED_DATA / "models" / "Qwen3-0.6B"


@pytest.fixture(params=["file", "etcd"])
async def new_store(request, tmp_path) -> AsyncIterator[Callable[..., KeyValueStore]]:
    stores: list[KeyValueStore] = []

    def make(ttl: float = 10.0) -> KeyValueStore:
        if request.param == "file":
            store: KeyValueStore = FileStore(ttl=ttl, root=tmp_path / "kv")
        else:
            etcd = request.getfixturevalue("etcd_server")
            store = EtcdStore(ttl=ttl, endpoints=[("127.0.0.1", etcd.client_port)])
        stores.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for store in stores:
        with contextlib.suppress(Exception):
            await store.close()


async def test_files_survive_the_first_worker_and_leave_with_the_last(new_store, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(QWEN, model)
    spec = describe_model_files(model)
    prefix = registry.model_files_prefix(spec.digest)
    first, second, frontend = new_store(), new_store(), new_store()
    for store in (first, second, frontend):
        await store.start()

    # The first worker writes all 11 chunks (each under etcd's request limit); the second finds them.
    assert await publish_model_files(first, model, spec) == len(spec.chunks) == 11
    assert await publish_model_files(second, model, spec) == 0
    keeper = ModelFilesKeeper(second, model, spec, interval=0.2)
    keeper.start()
    try:
        path = await fetch_model_files(frontend, spec, tmp_path / "cache-a")
        assert (path / "tokenizer.json").read_bytes() == (QWEN / "tokenizer.json").read_bytes()

        # The first worker leaves: the chunks went with its lease, and the second rewrites them.
        await first.close()
        await async_wait_for(lambda: keeper.rewritten == len(spec.chunks), 10, what="the keeper to rewrite chunks")
        assert len(await frontend.keys(prefix)) == len(spec.chunks)
        path = await fetch_model_files(frontend, spec, tmp_path / "cache-b")
        assert (path / "config.json").read_bytes() == (QWEN / "config.json").read_bytes()
    finally:
        await keeper.close()

    # The last worker leaves: nothing stays behind in the store.
    await second.close()
    assert await frontend.keys(prefix) == []


async def test_chunks_of_a_crashed_worker_expire(new_store, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(QWEN / name, model / name)
    spec = describe_model_files(model)
    prefix = registry.model_files_prefix(spec.digest)
    # the file store reaps by the reader's TTL, so both use a short one
    worker, frontend = new_store(ttl=2.0), new_store(ttl=2.0)
    await worker.start()
    await frontend.start()
    await publish_model_files(worker, model, spec)
    assert len(await frontend.keys(prefix)) == len(spec.chunks)
    # A crash: the lease is no longer refreshed and never revoked.
    if isinstance(worker, EtcdStore):
        assert worker._keepalive is not None
        worker._keepalive.cancel()
    else:
        assert isinstance(worker, FileStore)
        worker._stop.set()
    await async_wait_for(lambda: _empty(frontend, prefix), 10, interval=0.2, what="the chunks to expire")


async def _empty(store: KeyValueStore, prefix: str) -> bool:
    await asyncio.sleep(0)
    return await store.keys(prefix) == []
