"""Ship a model's small files (tokenizer, configs, chat template) through the discovery store.

A card's ``model_path`` names a folder on the worker's host; a frontend on another host cannot open
it. So the worker describes the files by content in the card (:class:`ModelFiles`: per-file sha256,
a digest over them) and writes the bytes to the discovery store; a frontend whose ``model_path`` is
missing or differs fetches them into a local cache folder, verifies them, and loads from there.

Layout: the files, in the card's order, are concatenated and cut into raw chunks of
:data:`CHUNK_BYTES`; each chunk is zlib-compressed and stored at
``v1/model_files/{digest}/{index:05d}``. The card lists the sha256 of each *raw* chunk, so chunks are
checked one by one (a corrupted value names its chunk) and two workers whose zlib builds compress
differently still write interchangeable values. 1 MiB raw stays under etcd's default 1.5 MiB
request limit even for incompressible data, and each chunk is fetched with its own ``get`` so no
reply nears gRPC's 4 MiB default. Qwen3's 11 MB tokenizer.json becomes 11 values, ~2.2 MB in all.

Why the discovery store rather than the JetStream object store: one path for every backend (file,
mem, etcd; NATS stays optional) and lifetime for free. The chunks are leased keys: every worker
serving a digest writes the chunks that are missing under its own lease, then re-checks every
``ttl/2`` (jittered) and rewrites any that left with another worker's lease. When the last worker
goes, its lease takes the chunks with it, so nothing leaks per restart and there is nothing to
garbage-collect. (An object-store bucket has no lease: it would need its own collector.)

The frontend's cache is ``DYN_MODEL_FILES_CACHE`` (default ``$TMPDIR/dynamo_model_cache``), one
folder per digest, created 0700; its content is verified against the card on every use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec

from dynamo.llm.model_path import MODEL_FILES
from dynamo.llm.protocols.model_card import ModelDeploymentCard, ModelFile, ModelFiles
from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.discovery.store import KeyValueStore

logger = logging.getLogger(__name__)

#: raw bytes per chunk (before compression); see the module docstring for the size reasoning
CHUNK_BYTES = 1 << 20
#: zlib level: 6 is ~15% smaller than 1 for tokenizer JSON and runs once per worker start, in a thread
ZLIB_LEVEL = 6


class ModelFilesCorrupt(errors.Internal):
    """A model-files chunk or file does not match the hash its card gives."""


# -- describing and packing (worker side) ------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_files(model_dir: Path, names: list[str]) -> list[bytes]:
    return [(model_dir / name).read_bytes() for name in names]


def describe_model_files(model_dir: str | os.PathLike[str], chunk_size: int = CHUNK_BYTES) -> ModelFiles:
    """Hash the files of ``MODEL_FILES`` present in ``model_dir`` (no weights; ~20 ms for 11 MB)."""
    root = Path(model_dir)
    names = [name for name in MODEL_FILES if (root / name).is_file()]
    datas = _read_files(root, names)
    files = [ModelFile(name, len(data), _sha256(data)) for name, data in zip(names, datas, strict=True)]
    blob = b"".join(datas)
    chunks = [_sha256(blob[i:i + chunk_size]) for i in range(0, len(blob), chunk_size)]
    digest = _sha256(msgspec.json.encode([[f.name, f.size, f.sha256] for f in files]))
    return ModelFiles(digest=digest, files=files, chunk_size=chunk_size, chunks=chunks)


def pack_chunks(model_dir: str | os.PathLike[str], spec: ModelFiles, indices: list[int] | None = None) -> dict[int, bytes]:
    """Compressed values of the chunks ``indices`` (all by default), read afresh from ``model_dir``.

    Raises :class:`ModelFilesCorrupt` when the folder no longer holds what ``spec`` describes (a
    file edited after the card was built): shipping it would poison every frontend's cache.
    """
    blob = _verified_blob(Path(model_dir), spec)
    if blob is None:
        raise ModelFilesCorrupt(f"model files in {model_dir} changed since the model card was built "
                                f"(digest {spec.digest[:12]}); restart the worker")
    wanted = range(len(spec.chunks)) if indices is None else indices
    size = spec.chunk_size
    return {i: zlib.compress(blob[i * size:(i + 1) * size], ZLIB_LEVEL) for i in wanted}


def unpack_chunks(spec: ModelFiles, values: list[bytes]) -> dict[str, bytes]:
    """Files by name from the stored chunk values, each chunk and file checked against ``spec``."""
    if len(values) != len(spec.chunks):
        raise ModelFilesCorrupt(f"model files {spec.digest[:12]}: {len(values)} chunks, the card lists "
                                f"{len(spec.chunks)}")
    raws = []
    for i, (value, want) in enumerate(zip(values, spec.chunks, strict=True)):
        try:
            raw = zlib.decompress(value)
        except zlib.error as exc:
            raise ModelFilesCorrupt(f"model files {spec.digest[:12]}: chunk {i} of {len(values)} is corrupted "
                                    f"in the discovery store (cannot decompress: {exc})") from None
        if _sha256(raw) != want:
            raise ModelFilesCorrupt(f"model files {spec.digest[:12]}: chunk {i} of {len(values)} is corrupted "
                                    "in the discovery store (sha256 differs from the model card)")
        raws.append(raw)
    blob = b"".join(raws)
    out: dict[str, bytes] = {}
    offset = 0
    for f in spec.files:
        data = blob[offset:offset + f.size]
        offset += f.size
        if len(data) != f.size or _sha256(data) != f.sha256:
            raise ModelFilesCorrupt(f"model files {spec.digest[:12]}: {f.name} does not match the model card")
        out[f.name] = data
    if offset != len(blob):
        raise ModelFilesCorrupt(f"model files {spec.digest[:12]}: {len(blob) - offset} bytes beyond the listed files")
    return out


def _verified_blob(root: Path, spec: ModelFiles) -> bytes | None:
    """The concatenated files when ``root`` holds exactly what ``spec`` describes, else None."""
    datas = []
    try:
        for f in spec.files:
            path = root / f.name
            if path.stat().st_size != f.size:
                return None
            data = path.read_bytes()
            if _sha256(data) != f.sha256:
                return None
            datas.append(data)
    except OSError:  # missing, unreadable (another user's folder), not a directory
        return None
    return b"".join(datas)


def folder_matches(model_dir: str | os.PathLike[str], spec: ModelFiles) -> bool:
    """Whether ``model_dir`` is readable here and holds byte-identical files."""
    return _verified_blob(Path(model_dir), spec) is not None


# -- publishing (worker side) -----------------------------------------------------------------------


async def publish_model_files(store: KeyValueStore, model_dir: str | os.PathLike[str], spec: ModelFiles) -> int:
    """Write the chunks of ``spec`` missing from the store under this process's lease; returns how many.

    Chunks already present (written by another worker serving the same digest) are left alone, so N
    workers starting together write the files about once, not N times.
    """
    prefix = registry.model_files_prefix(spec.digest)
    present = set(await store.keys(prefix))
    missing = [i for i in range(len(spec.chunks)) if registry.model_files_chunk_key(spec.digest, i) not in present]
    if not missing:
        return 0
    values = await asyncio.to_thread(pack_chunks, model_dir, spec, missing)
    for i in missing:
        await store.put(registry.model_files_chunk_key(spec.digest, i), values[i])
    return len(missing)


class ModelFilesKeeper:
    """Keeps one digest's chunks in the store while this worker lives (see the module docstring)."""

    def __init__(self, store: KeyValueStore, model_dir: str | os.PathLike[str], spec: ModelFiles,
                 stopped: Callable[[], bool] = lambda: False, interval: float | None = None) -> None:
        self.store = store
        self.model_dir = model_dir
        self.spec = spec
        self.stopped = stopped
        self.interval = interval if interval is not None else max(store.ttl / 2.0, 0.5)
        self.rewritten = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"model-files-{self.spec.digest[:12]}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self.stopped():
            # Jitter, so that workers who lost the same chunks do not all rewrite them at once.
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.25))
            if self.stopped():
                return
            try:
                n = await publish_model_files(self.store, self.model_dir, self.spec)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never die silently: a store outage must not end the upkeep for this worker's life.
                logger.exception("model files %s: cannot check or rewrite chunks; retrying", self.spec.digest[:12])
                continue
            if n:
                self.rewritten += n
                logger.info("model files %s: rewrote %d chunk(s) that left with another worker",
                            self.spec.digest[:12], n)


# -- fetching (frontend side) ------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("DYN_MODEL_FILES_CACHE") or Path(tempfile.gettempdir()) / "dynamo_model_cache")


def _prepare_root(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = root.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise errors.ConfigError(
            f"model files cache {root} belongs to another user (uid {st.st_uid}); set DYN_MODEL_FILES_CACHE "
            "to a folder of your own")


def _install(root: Path, spec: ModelFiles, files: dict[str, bytes]) -> Path:
    """Write ``files`` as ``root/{digest}`` atomically (temp folder + rename); returns the folder."""
    _prepare_root(root)
    target = root / spec.digest
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.digest[:12]}-", dir=root))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if target.exists() and not folder_matches(target, spec):
            shutil.rmtree(target, ignore_errors=True)  # a damaged or planted copy: replace it
        try:
            os.rename(tmp, target)
        except OSError:
            # Another frontend on this host installed it first; use theirs if it is right.
            if not folder_matches(target, spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


async def fetch_model_files(store: KeyValueStore, spec: ModelFiles, root: Path | None = None,
                            wait: float | None = None) -> Path:
    """A local folder holding the files of ``spec``: the verified cache, else fetched from the store.

    A missing chunk is waited for up to ``wait`` seconds (default: two store TTLs, the time a
    surviving worker needs to rewrite chunks lost with another's lease), then ``Unavailable``.
    A chunk or file that does not match its hash raises :class:`ModelFilesCorrupt`.
    """
    root = root if root is not None else cache_root()
    target = root / spec.digest
    if await asyncio.to_thread(folder_matches, target, spec):
        return target
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait if wait is not None else 2 * store.ttl)
    values: list[bytes] = []
    for i in range(len(spec.chunks)):
        key = registry.model_files_chunk_key(spec.digest, i)
        while (value := await store.get(key)) is None:
            if loop.time() > deadline:
                raise errors.Unavailable(
                    f"model files {spec.digest[:12]}: chunk {i} of {len(spec.chunks)} is not in the discovery "
                    "store (did the worker publish them? it must run this version)")
            await asyncio.sleep(0.2)
        values.append(value)
    files = await asyncio.to_thread(unpack_chunks, spec, values)
    path = await asyncio.to_thread(_install, root, spec, files)
    logger.info("model files %s: fetched %d file(s) from the discovery store into %s",
                spec.digest[:12], len(files), path)
    return path


async def localize_card(card: ModelDeploymentCard, store: KeyValueStore, root: Path | None = None) -> ModelDeploymentCard:
    """``card`` with a ``model_path`` readable on this host.

    The worker's own folder is used when this host sees it with the same content (same host, or a
    shared filesystem); otherwise the files come from the store. Cards without ``files`` (older
    workers) are returned as they are.
    """
    spec = card.files
    if spec is None:
        return card
    if await asyncio.to_thread(folder_matches, card.model_path, spec):
        return card
    path = await fetch_model_files(store, spec, root)
    return msgspec.structs.replace(card, model_path=str(path))
