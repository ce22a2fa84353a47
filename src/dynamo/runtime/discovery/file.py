"""File-backed store for one host with no server (DESIGN §4).

One file per key under ``DYN_FILE_KV`` (default ``$TMPDIR/dynamo_store_kv``), named by the
percent-encoded key and written atomically (temp file + rename). Liveness is the file's mtime: a
daemon thread re-touches this process's files every ``max(ttl/3, 1s)``, and readers treat files older
than ``ttl`` as gone and delete them. A thread rather than a task, so that a busy event loop cannot
make a live process look dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

from dynamo.runtime import errors
from dynamo.runtime.discovery.store import DEFAULT_TTL_SECS, KeyValueStore, Watch, WatchEvent

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp_"
_PERSIST_DIR = "_persist"
POLL_INTERVAL_SECS = 0.2


def default_root() -> Path:
    return Path(os.environ.get("DYN_FILE_KV") or Path(tempfile.gettempdir()) / "dynamo_store_kv")


def prepare_root(root: Path) -> None:
    """Create ``root`` private (0700) or check that an existing one is safe to trust.

    Whoever can write the root can plant instance records and so receive the requests routed to
    them; the default root sits in the shared temp directory, where another local user may have
    created it first. Raises ``ConfigError`` (one line: why, and what to do) when the root is owned by
    another user or writable by group or others.
    """
    with contextlib.suppress(FileExistsError):
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)
    me = os.geteuid()
    link = os.lstat(root)
    if stat.S_ISLNK(link.st_mode) and link.st_uid != me:
        raise errors.ConfigError(
            f"file store root {root} is a symlink owned by uid {link.st_uid}, not this user (uid {me}): "
            f"another user could redirect discovery; remove it or set DYN_FILE_KV to a directory of your own")
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.ConfigError(f"file store root {root} is not a directory; set DYN_FILE_KV to a directory")
    if st.st_uid != me:
        raise errors.ConfigError(
            f"file store root {root} is owned by uid {st.st_uid}, not this user (uid {me}): another user "
            f"could plant instance records and receive requests; remove it or set DYN_FILE_KV to a "
            f"directory of your own")
    if st.st_mode & 0o022:
        raise errors.ConfigError(
            f"file store root {root} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"they could plant instance records and receive requests; run 'chmod 700 {root}' or set "
            f"DYN_FILE_KV to a private directory")


class FileStore(KeyValueStore):
    def __init__(self, ttl: float = DEFAULT_TTL_SECS, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__(ttl)
        self.root = Path(root) if root is not None else default_root()
        self._persist = self.root / _PERSIST_DIR
        self._lease = random.getrandbits(63) or 1
        self._owned: dict[Path, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._toucher: threading.Thread | None = None
        # each watch with its prefix and what it has been told (so that a new watch never needs
        # another watch's view, and only watched prefixes are read on each poll)
        self._watches: list[_FileWatch] = []
        self._poller: asyncio.Task[None] | None = None

    @property
    def lease_id(self) -> int:
        return self._lease

    async def start(self) -> None:
        prepare_root(self.root)
        self._persist.mkdir(mode=0o700, exist_ok=True)
        self._toucher = threading.Thread(target=self._touch_loop, name="dynamo-file-kv-lease", daemon=True)
        self._toucher.start()

    async def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        with self._lock:
            owned, self._owned = list(self._owned), {}
        for path in owned:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for fw in list(self._watches):
            fw.watch.close()

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str, leased: bool) -> Path:
        return (self.root if leased else self._persist) / quote(key, safe="")

    def _write(self, path: Path, value: bytes) -> None:
        tmp = path.parent / f"{_TMP_PREFIX}{random.getrandbits(64):016x}"
        tmp.write_bytes(value)
        os.replace(tmp, path)

    def _touch_loop(self) -> None:
        interval = max(self.ttl / 3.0, 1.0)
        while not self._stop.wait(interval):
            with self._lock:
                owned = list(self._owned.items())
            for path, value in owned:
                try:
                    os.utime(path)
                except FileNotFoundError:
                    # Another reader reaped us while we were stalled: re-register rather than vanish.
                    try:
                        self._write(path, value)
                        logger.warning("file store: re-created reaped key %s", unquote(path.name))
                    except OSError:
                        logger.exception("file store: cannot refresh %s", path)
                except OSError:
                    logger.exception("file store: cannot refresh %s", path)

    # -- operations ----------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        path = self._path(key, leased)
        self._write(path, value)
        if leased:
            with self._lock:
                self._owned[path] = value

    async def get(self, key: str) -> bytes | None:
        return self._scan((key,)).get(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return self._scan((prefix,))

    async def keys(self, prefix: str) -> list[str]:
        return list(self._scan((prefix,), read=False))

    async def delete(self, key: str) -> None:
        for leased in (True, False):
            path = self._path(key, leased)
            with self._lock:
                self._owned.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _scan(self, prefixes: tuple[str, ...], read: bool = True) -> dict[str, bytes]:
        """Keys under any of ``prefixes`` (with values when ``read``); reaps stale files under any key.

        Only matching files are read: bulky records (model files) must not be re-read by every poll.
        """
        now = time.time()
        out: dict[str, bytes] = {}
        for directory, leased in ((self.root, True), (self._persist, False)):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(_TMP_PREFIX) or name == _PERSIST_DIR:
                    continue
                try:
                    if leased and now - entry.stat().st_mtime > self.ttl:
                        # Stale: its owner stopped refreshing it. Reap it for everyone.
                        os.unlink(entry.path)
                        logger.info("file store: reaped stale key %s", unquote(name))
                        continue
                    key = unquote(name)
                    if not key.startswith(prefixes):
                        continue
                    if read:
                        with open(entry.path, "rb") as f:
                            out[key] = f.read()
                    else:
                        out[key] = b""
                except FileNotFoundError:
                    continue
        return out

    async def watch(self, prefix: str) -> Watch:
        def unregister(w: Watch) -> None:
            self._watches[:] = [fw for fw in self._watches if fw.watch is not w]

        watch = Watch(on_close=unregister)
        fw = _FileWatch(prefix, watch, self._scan((prefix,)))
        for key, value in fw.seen.items():
            watch.push(WatchEvent("put", key, value))
        self._watches.append(fw)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
        return watch

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_SECS)
            # Only the watches that exist before the scan: a newer one already holds a fresher view.
            watches = list(self._watches)
            if not watches:
                continue
            try:
                current = await asyncio.to_thread(self._scan, tuple({fw.prefix for fw in watches}))
            except Exception:
                logger.exception("file store: scan failed")
                continue
            for fw in watches:
                if fw.watch.closed:
                    continue
                mine = {k: v for k, v in current.items() if k.startswith(fw.prefix)}
                for key, value in mine.items():
                    if fw.seen.get(key) != value:
                        fw.watch.push(WatchEvent("put", key, value))
                for key in fw.seen.keys() - mine.keys():
                    fw.watch.push(WatchEvent("delete", key))
                fw.seen = mine


class _FileWatch:
    __slots__ = ("prefix", "seen", "watch")

    def __init__(self, prefix: str, watch: Watch, seen: dict[str, bytes]) -> None:
        self.prefix = prefix
        self.watch = watch
        self.seen = seen
