"""The file store's root directory: private to its user, refused when another user could write it.

Anyone who can write the root can plant instance records and receive the prompts routed to them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dynamo.runtime import errors
from dynamo.runtime.discovery.file import FileStore

pytestmark = pytest.mark.integration


async def test_new_root_is_created_private(tmp_path):
    root = tmp_path / "kv"
    store = FileStore(root=root)
    await store.start()
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
    finally:
        await store.close()


async def test_default_root_is_created_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DYN_FILE_KV", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    store = FileStore()
    await store.start()
    try:
        assert store.root == tmp_path / "dynamo_store_kv"
        assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    finally:
        await store.close()


async def test_root_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() == 0:
        root = tmp_path / "kv"
        root.mkdir(mode=0o700)
        os.chown(root, 12345, 12345)
        other = 12345
    else:
        root, other = Path("/"), 0  # without root: a directory that root owns stands in
    with pytest.raises(errors.ConfigError, match=f"owned by uid {other}") as info:
        await FileStore(root=root).start()
    assert "DYN_FILE_KV" in str(info.value)
    assert "\n" not in str(info.value)


async def test_root_writable_by_others_is_refused(tmp_path):
    root = tmp_path / "kv"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(errors.ConfigError, match="writable by group or others") as info:
        await FileStore(root=root).start()
    assert f"chmod 700 {root}" in str(info.value)


async def test_own_private_root_is_accepted(tmp_path):
    root = tmp_path / "kv"
    root.mkdir(mode=0o755)
    store = FileStore(root=root)
    await store.start()
    await store.put("k", b"v")
    assert await store.get("k") == b"v"
    await store.close()
