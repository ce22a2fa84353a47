"""Model files shipped through the discovery store: describe, chunk, verify (llm/model_files.py)."""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest

from dynamo.llm.model_files import (
    ModelFilesCorrupt,
    describe_model_files,
    fetch_model_files,
    folder_matches,
    localize_card,
    pack_chunks,
    publish_model_files,
    unpack_chunks,
)
from dynamo.llm.model_registration import build_card
from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.discovery.mem import MemoryStore
from tests.support.procs import SHARED_DATA

pytestmark = pytest.mark.unit

QWEN = SHARED_DATA / "models" / "Qwen3-0.6B"


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(os.urandom(3000) + b'{"x": 1}' * 200)
    (d / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    (d / "config.json").write_text('{"max_position_embeddings": 128}')
    (d / "weights.safetensors").write_bytes(b"never shipped")
    return d


def test_round_trip_over_several_chunks(small_model: Path) -> None:
    spec = describe_model_files(small_model, chunk_size=1000)
    assert [f.name for f in spec.files] == ["tokenizer.json", "tokenizer_config.json", "config.json"]
    assert len(spec.chunks) == 5  # 4600 + 21 + 32 bytes in 1000-byte chunks
    values = pack_chunks(small_model, spec)
    files = unpack_chunks(spec, [values[i] for i in range(len(spec.chunks))])
    assert files == {name: (small_model / name).read_bytes() for name in files}


def test_qwen_chunks_fit_an_etcd_request() -> None:
    spec = describe_model_files(QWEN)
    values = pack_chunks(QWEN, spec)
    assert len(values) == 11
    assert max(len(v) for v in values.values()) < 1024 * 1024  # etcd rejects requests over 1.5 MiB
    assert sum(len(v) for v in values.values()) < 3_000_000


def test_corrupted_chunk_is_named(small_model: Path) -> None:
    spec = describe_model_files(small_model, chunk_size=1000)
    values = [pack_chunks(small_model, spec)[i] for i in range(len(spec.chunks))]
    # valid zlib, wrong content: caught by the chunk's hash
    bad = list(values)
    bad[2] = zlib.compress(b"\0" * 1000)
    with pytest.raises(ModelFilesCorrupt, match="chunk 2 of 5 is corrupted"):
        unpack_chunks(spec, bad)
    # damaged bytes: caught by zlib
    bad = list(values)
    bad[3] = bad[3][:10] + b"garbage" + bad[3][17:]
    with pytest.raises(ModelFilesCorrupt, match="chunk 3 of 5 is corrupted"):
        unpack_chunks(spec, bad)
    with pytest.raises(ModelFilesCorrupt, match="4 chunks"):
        unpack_chunks(spec, values[:4])


def test_folder_edited_after_the_card_is_not_shipped(small_model: Path) -> None:
    spec = describe_model_files(small_model)
    (small_model / "config.json").write_text('{"max_position_embeddings": 256}')
    assert not folder_matches(small_model, spec)
    with pytest.raises(ModelFilesCorrupt, match="changed since the model card was built"):
        pack_chunks(small_model, spec)


def test_checksum_follows_content_not_path(small_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "model"
    shutil.copytree(small_model, other)
    a = build_card(str(small_model), "m")
    b = build_card(str(other), "m")
    assert a.model_path != b.model_path and a.checksum() == b.checksum()
    (other / "tokenizer_config.json").write_text('{"eos_token": "<eos>"}')
    assert build_card(str(other), "m").checksum() != a.checksum()
    # cards without files (older workers) keep the path-based checksum
    assert build_card(str(small_model), "m", ship_files=False).checksum() != a.checksum()


async def test_publish_fetch_and_cache(small_model: Path, tmp_path: Path) -> None:
    worker = MemoryStore(space="model-files-publish")
    frontend = MemoryStore(space="model-files-publish")
    spec = describe_model_files(small_model, chunk_size=1000)
    assert await publish_model_files(worker, small_model, spec) == 5
    assert await publish_model_files(worker, small_model, spec) == 0  # already there: written once
    cache = tmp_path / "cache"
    path = await fetch_model_files(frontend, spec, cache)
    assert path == cache / spec.digest and folder_matches(path, spec)
    assert not (path / "weights.safetensors").exists()
    assert cache.stat().st_mode & 0o777 == 0o700

    # A damaged cached copy is detected and replaced from the store.
    (path / "config.json").write_text("{}")
    assert await fetch_model_files(frontend, spec, cache) == path and folder_matches(path, spec)

    # When the worker goes, its lease takes the chunks with it: nothing left behind.
    await worker.close()
    assert await frontend.keys(registry.model_files_prefix(spec.digest)) == []
    shutil.rmtree(path)
    with pytest.raises(errors.Unavailable, match="chunk 0 of 5 is not in the discovery store"):
        await fetch_model_files(frontend, spec, cache, wait=0.3)


async def test_corrupted_chunk_in_store_is_a_clear_error(small_model: Path, tmp_path: Path) -> None:
    store = MemoryStore(space="model-files-corrupt")
    spec = describe_model_files(small_model, chunk_size=1000)
    await publish_model_files(store, small_model, spec)
    await store.put(registry.model_files_chunk_key(spec.digest, 1), b"not zlib at all")
    with pytest.raises(ModelFilesCorrupt, match="chunk 1 of 5 is corrupted"):
        await fetch_model_files(store, spec, tmp_path / "cache")
    assert not (tmp_path / "cache" / spec.digest).exists()
    await store.close()


async def test_localize_card_uses_the_local_folder_or_the_store(small_model: Path, tmp_path: Path) -> None:
    store = MemoryStore(space="model-files-localize")
    card = build_card(str(small_model), "m")
    assert card.files is not None
    await publish_model_files(store, card.model_path, card.files)
    cache = tmp_path / "cache"
    # Same host, same content: the worker's folder is used as it is.
    assert (await localize_card(card, store, cache)).model_path == card.model_path
    # The folder is gone (another host): the files come from the store, and the checksum holds.
    shutil.rmtree(small_model)
    local = await localize_card(card, store, cache)
    assert local.model_path == str(cache / card.files.digest)
    assert local.checksum() == card.checksum()
    assert (Path(local.model_path) / "tokenizer.json").read_bytes()[-8:] == b'{"x": 1}'
    await store.close()
