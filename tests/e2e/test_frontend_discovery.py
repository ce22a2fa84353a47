"""Workers coming and going while the frontend serves; ``make run`` from a fresh checkout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.support.deploy import QWEN, TINYLLAMA, new_deployment
from tests.support.procs import REPO, free_port, wait_for

pytestmark = pytest.mark.e2e


def test_workers_added_and_removed_while_serving(tmp_path):
    dep = new_deployment()
    try:
        first = dep.mocker("--speedup-ratio", "100", "--model-name", "qwen", name="qwen")
        dep.start_frontend()
        dep.wait_models({"qwen"})
        client = openai.OpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0)

        second = dep.mocker("--speedup-ratio", "100", "--model-name", "llama", "--block-size", "16",
                            model=TINYLLAMA, name="llama")
        dep.wait_models({"qwen", "llama"}, timeout=15)
        resp = client.completions.create(model="llama", prompt="Hello", max_tokens=4)
        assert resp.usage.completion_tokens == 4

        # A killed worker's model disappears within the store TTL, and meanwhile no request fails.
        os.kill(second.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while "llama" in dep.models():
            assert time.monotonic() < deadline, "model of a dead worker still listed"
            r = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2)
            assert r.usage.completion_tokens == 2
            time.sleep(0.2)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="llama", prompt="Hello", max_tokens=4)

        # With no workers left the model goes away: 404 for it, and never a hang.
        first.send_signal(signal.SIGTERM)
        first.wait(15)
        wait_for(lambda: dep.models() == [], 15, what="qwen to disappear")
        t0 = time.monotonic()
        r = httpx.post(dep.url + "/v1/chat/completions", timeout=10,
                       json={"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code in (404, 503) and time.monotonic() - t0 < 5
    finally:
        dep.close()


def test_instance_gone_before_store_notices_gives_503_not_hang():
    dep = new_deployment()
    try:
        worker = dep.mocker("--speedup-ratio", "100")
        dep.start_frontend()
        dep.wait_models({"Qwen3-0.6B"})
        client = openai.OpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model="Qwen3-0.6B", prompt="a", max_tokens=2).usage.completion_tokens == 2
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client.completions.create(model="Qwen3-0.6B", prompt="a", max_tokens=2)
        assert info.value.status_code == 503
        assert time.monotonic() - t0 < 5
    finally:
        dep.close()


@pytest.mark.parametrize("target", ["run", "run-disagg"])
def test_make_run_serves_a_request(tmp_path, target):
    import threading

    port = free_port()
    env = {**os.environ, "DYN_HTTP_PORT": str(port), "DYN_MODEL_PATH": str(QWEN), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(["make", "-s", target, f"VENV={sys.prefix}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.decode(errors="replace") for ln in proc.stdout),
                              daemon=True)
    reader.start()
    try:
        # Ready for a user once the banner with the URL and the curl is printed.
        try:
            wait_for(lambda: any("Press Ctrl-C" in ln for ln in lines), 60, interval=0.2, what="make run banner")
        except TimeoutError:
            raise AssertionError("".join(lines)[-3000:]) from None
        text = "".join(lines)
        assert f"http://localhost:{port}/v1" in text and "curl" in text
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                       json={"model": "Qwen3-0.6B", "messages": [{"role": "user", "content": "Hello!"}],
                             "max_tokens": 5})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        if target == "run-disagg":
            assert "1 prefill + 2 decode" in text
            assert json.loads(r.headers["x-dynamo-routing"])["prefill"]["mode"] == "remote"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(30)
        reader.join(10)
        text = "".join(lines)
        # make itself re-raises SIGINT (-2); what matters is the clean stop of everything it started.
        assert proc.returncode in (0, -signal.SIGINT, 130), text[-3000:]
        assert "dynamo: stopped" in text and "a component exited" not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_busy_workers_get_503_and_rejections_are_counted():
    dep = new_deployment()
    try:
        dep.mocker("--num-gpu-blocks-override", "64", "--block-size", "4", "--speedup-ratio", "0.5")
        dep.start_frontend("--active-decode-blocks-threshold", "0.2", env={"DYN_ADMIN_TOKEN": "s3cret"})
        dep.wait_models({"Qwen3-0.6B"})
        admin = {"Authorization": "Bearer s3cret"}
        status, body = dep.get("/busy_threshold")
        assert status == 200 and body["thresholds"][0]["active_decode_blocks_threshold"] == 0.2

        def post(max_tokens: int) -> int:
            r = httpx.post(dep.url + "/v1/completions", timeout=120,
                           json={"model": "Qwen3-0.6B", "prompt": [7] * 60, "max_tokens": max_tokens})
            return r.status_code

        def kv_used() -> float:
            text = httpx.get(dep.url + "/metrics", timeout=5).text
            vals = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                    if ln.startswith("dynamo_frontend_worker_kv_used_blocks{")]
            return max(vals, default=0.0)

        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(2)
        # One long request holds 15 of the worker's 64 blocks: above the 0.2 threshold.
        long_one = pool.submit(post, 150)
        wait_for(lambda: kv_used() > 0.2 * 64, 30, what="the worker to report its KV usage")
        assert post(5) == 503
        metrics = httpx.get(dep.url + "/metrics", timeout=5).text
        line = next(ln for ln in metrics.splitlines() if ln.startswith("dynamo_frontend_model_rejection_total"))
        assert float(line.rsplit(" ", 1)[1]) >= 1

        # Only the operator may change thresholds: no token or a wrong one is refused, and nothing changes.
        lift = {"model": "Qwen3-0.6B", "active_decode_blocks_threshold": None}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(dep.url + "/busy_threshold", json=lift, headers=headers, timeout=5)
            assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
        assert dep.get("/busy_threshold")[1]["thresholds"][0]["active_decode_blocks_threshold"] == 0.2
        # An unknown model is 404 (and is not remembered).
        r = httpx.post(dep.url + "/busy_threshold", json={"model": "nope", "active_decode_blocks_threshold": 0},
                       headers=admin, timeout=5)
        assert r.status_code == 404
        assert [t["model"] for t in dep.get("/busy_threshold")[1]["thresholds"]] == ["Qwen3-0.6B"]
        # Raising the threshold through the API lets traffic through again.
        r = httpx.post(dep.url + "/busy_threshold", json=lift, headers=admin, timeout=5)
        assert r.status_code == 200 and r.json()["active_decode_blocks_threshold"] is None
        assert post(5) == 200
        assert httpx.post(dep.url + "/busy_threshold", content=b"nope", headers=admin, timeout=5).status_code == 400
        assert long_one.result(timeout=120) == 200
        pool.shutdown()
    finally:
        dep.close()


def test_worker_with_a_different_card_is_rejected_from_the_set():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100", name="good")
        dep.start_frontend()
        dep.wait_models({"Qwen3-0.6B"})
        # Same model name and namespace, different KV block size: a different card checksum.
        dep.mocker("--speedup-ratio", "100", "--block-size", "16", name="odd")

        def odd_logged() -> bool:
            return "rejecting worker" in (dep.logdir / "frontend.log").read_text()

        wait_for(odd_logged, 20, what="the mismatched worker to be rejected")
        _, health = dep.get("/health")
        assert len(health["instances"]) == 1
        for _ in range(6):
            r = httpx.post(dep.url + "/v1/completions", timeout=30,
                           json={"model": "Qwen3-0.6B", "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200
    finally:
        dep.close()
