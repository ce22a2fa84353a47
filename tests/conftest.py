import pytest

from tests.support.etcd import etcd_server  # noqa: F401  (session fixture)


@pytest.fixture
def file_store_dir(tmp_path, monkeypatch):
    root = tmp_path / "kv"
    monkeypatch.setenv("DYN_FILE_KV", str(root))
    return root
