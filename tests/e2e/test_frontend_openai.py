"""The frontend through the official ``openai`` client against real mocker workers."""

from __future__ import annotations

import httpx
import openai
import pytest

from dynamo.llm.preprocessor.tokenizer import Tokenizer
from tests.support.deploy import QWEN, new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
CONTEXT = 4096


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment({"DYN_HTTP_BODY_LIMIT_MB": "1"})
    try:
        dep.mocker("--num-workers", "2", "--speedup-ratio", "100", "--context-length", str(CONTEXT))
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield dep
    finally:
        dep.close()


@pytest.fixture(scope="module")
def client(deployment):
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(QWEN)


MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_mocker_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_non_streaming_exact_usage(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    # The HF template render of this conversation is 26 tokens (shared/data/models/README.md).
    assert resp.usage.prompt_tokens == 26
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == 38


def test_chat_streaming_with_usage(client, tokenizer):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.prompt_tokens == 26 and usage.completion_tokens == 20
    # Mocker tokens are random ids in 1000-1999, and some are partial UTF-8 byte tokens, so the text may
    # legitimately end in U+FFFD; the detokenizer's no-broken-UTF-8 rule is tested on real streams.
    assert text
    assert len({c.id for c in chunks}) == 1


def test_completions_string_and_batch(client, tokenizer):
    resp = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=7)
    assert resp.usage.prompt_tokens == len(tokenizer.encode("The quick brown fox", add_special_tokens=True))
    assert resp.usage.completion_tokens == 7
    assert resp.choices[0].finish_reason == "length"
    batch = client.completions.create(model=MODEL, prompt=["one", "two two", "three"], max_tokens=3)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2]
    assert batch.usage.completion_tokens == 9


def test_completions_token_prompt_streaming(client):
    stream = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=5, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert "no-such-model" in info.value.body["message"]


BAD_CHAT = [
    ({"model": MODEL, "messages": "hello", "max_tokens": 4}, "messages"),
    ({"model": MODEL, "messages": [], "max_tokens": 4}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "top_p"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "presence_penalty": -3}, "presence_penalty"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_requests_are_400_with_openai_error(deployment, body, param):
    r = httpx.post(deployment.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"] == "invalid_request_error"
    assert param in (err["message"] + str(err.get("param")))


def test_malformed_json_and_empty_body(deployment):
    for data in (b"{not json", b"", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(deployment.url + "/v1/chat/completions", content=data,
                       headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 400, (data, r.text)
        assert "error" in r.json()


def test_oversize_body_is_413(deployment):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    r = httpx.post(deployment.url + "/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 413


def test_prompt_longer_than_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[5] * (CONTEXT + 10), max_tokens=4)
    assert "context length" in info.value.body["message"]


def test_server_keeps_serving_after_bad_input(client, deployment):
    httpx.post(deployment.url + "/v1/chat/completions", content=b"\x00" * 100, timeout=10)
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert resp.usage.completion_tokens == 3


def test_health_live_metrics_openapi(deployment):
    status, health = deployment.get("/health")
    assert status == 200 and health["status"] == "healthy"
    assert health["failing_tasks"] == []
    assert len(health["instances"]) == 2
    assert health["endpoints"] == ["dyn://dynamo.backend.generate"]
    assert deployment.get("/live") == (200, {"status": "live", "message": "Service is live"})
    metrics = httpx.get(deployment.url + "/metrics", timeout=5).text
    assert "dynamo_frontend_requests_total" in metrics
    assert 'dynamo_frontend_model_context_length{model="Qwen3-0.6B"} 4096.0' in metrics
    assert "# TYPE dynamo_background_task_restarts_total counter" in metrics
    status, spec = deployment.get("/openapi.json")
    assert status == 200 and "/v1/chat/completions" in spec["paths"]
    r = httpx.post(deployment.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=5)
    assert r.status_code == 404


def test_operator_controls_are_off_without_opt_in(deployment):
    # Reading thresholds is public; changing them needs --admin-token, which this frontend lacks.
    status, body = deployment.get("/busy_threshold")
    assert status == 200 and [t["model"] for t in body["thresholds"]] == [MODEL]
    r = httpx.post(deployment.url + "/busy_threshold", timeout=5, headers={"Authorization": "Bearer x"},
                   json={"model": MODEL, "active_decode_blocks_threshold": 0})
    assert r.status_code == 403 and "--admin-token" in r.json()["error"]["message"]
    assert deployment.get("/busy_threshold")[1] == body
    # Pinning a worker needs --router-mode direct or --enable-direct-routing-header.
    _, health = deployment.get("/health")
    iid = health["instances"][0]["instance_id"]
    r = httpx.post(deployment.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                   headers={"x-worker-instance-id": str(iid)}, timeout=30)
    assert r.status_code == 403 and "--enable-direct-routing-header" in r.json()["error"]["message"]
    # A refused request is not left counted as in flight.
    metrics = httpx.get(deployment.url + "/metrics", timeout=5).text
    assert f'dynamo_frontend_inflight_requests{{model="{MODEL}"}} 0.0' in metrics


def test_garbage_on_the_http_socket_does_not_hurt(deployment, client):
    import socket

    for junk in (b"\x16\x03\x01\x02\x00garbage", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\n"
                 b"Content-Length: 99999999999\r\n\r\n{"):
        with socket.create_connection(("127.0.0.1", deployment.port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_client_disconnect_mid_stream_frees_the_request(deployment):
    def gauge(name: str) -> float:
        text = httpx.get(deployment.url + "/metrics", timeout=5).text
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))

    before = gauge("dynamo_frontend_disconnected_clients_total")
    with httpx.stream("POST", deployment.url + "/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "x", "max_tokens": 3000, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first chunk: the connection closes with the stream
    from tests.support.procs import wait_for

    wait_for(lambda: gauge("dynamo_frontend_inflight_requests") == 0, 10, what="the request to be freed")
    assert gauge("dynamo_frontend_disconnected_clients_total") == before + 1
    assert gauge("dynamo_frontend_model_cancellation_total") >= 1
    # The worker freed the request's KV blocks too (its kv_metrics reports reach the frontend).
    wait_for(lambda: gauge("dynamo_frontend_worker_kv_used_blocks{") == 0, 10, what="the worker to free its blocks")


def test_usage_reports_cached_prompt_tokens(client):
    prompt = list(range(2000, 2200))  # 200 tokens: 3 full 64-token blocks
    cached = []
    for _ in range(4):  # round-robin over 2 workers: each sees the prompt twice
        usage = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2).usage
        cached.append(usage.prompt_tokens_details.cached_tokens)
    assert cached[:2] == [0, 0] and cached[2:] == [192, 192]
