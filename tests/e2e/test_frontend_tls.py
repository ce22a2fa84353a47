"""TLS on the frontend, and its flag validation."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys

import httpx
import pytest

from tests.support.deploy import new_deployment
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if shutil.which("openssl") is None:
        message = "openssl is not installed: apt-get install openssl, or `make deps`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_https_serves_requests(cert):
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100")
        dep.start_frontend("--tls-cert-path", str(cert[0]), "--tls-key-path", str(cert[1]))
        url = f"https://127.0.0.1:{dep.port}"

        def ready() -> bool:
            try:
                return bool(httpx.get(url + "/v1/models", verify=False, timeout=1).json()["data"])
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_for(ready, 30, what="https frontend")
        r = httpx.post(url + "/v1/completions", verify=ssl.create_default_context(cafile=str(cert[0])), timeout=30,
                       json={"model": "Qwen3-0.6B", "prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        dep.close()


def test_tls_needs_both_files(cert):
    proc = subprocess.run([sys.executable, "-m", "dynamo.frontend", "--tls-cert-path", str(cert[0])],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--tls-cert-path and --tls-key-path must be given together" in proc.stderr
    assert "Traceback" not in proc.stderr
