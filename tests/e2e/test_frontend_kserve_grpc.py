"""The KServe v2 gRPC frontend against a mocker worker, driven by the official Triton client."""

from __future__ import annotations

import queue
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support.deploy import new_deployment  # noqa: E402
from tests.support.procs import REPO, free_port, wait_for  # noqa: E402

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"


def _text(prompt: str | bytes = "Hello there", datatype: str = "BYTES") -> object:
    inp = grpcclient.InferInput("text_input", [1], datatype)
    if datatype == "BYTES":
        inp.set_data_from_numpy(np.array([prompt if isinstance(prompt, bytes) else prompt.encode()], dtype=object))
    else:
        inp.set_data_from_numpy(np.array([7], dtype=np.int32))
    return inp


def _scalar(name: str, value: object, datatype: str, dtype: object) -> object:
    inp = grpcclient.InferInput(name, [1], datatype)
    inp.set_data_from_numpy(np.array([value], dtype=dtype))
    return inp


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    grpc_port, metrics_port = free_port(), free_port()
    try:
        # Slow enough that tokens leave the engine one step at a time (a fast one sends them in one batch).
        dep.mocker("--speedup-ratio", "2")
        dep.start_frontend("--kserve-grpc-server", "--grpc-port", str(grpc_port),
                           "--grpc-metrics-port", str(metrics_port))
        dep.wait_models({MODEL})
        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        wait_for(lambda: client.is_model_ready(MODEL), 15, what="the model to be ready over gRPC")
        yield dep, client, metrics_port
        client.close()
    finally:
        dep.close()


def test_health_and_metadata(deployment):
    _, client, _ = deployment
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL
    assert {"name": "text_input", "datatype": "BYTES", "shape": ["1"]} in meta["inputs"]
    assert [o["name"] for o in meta["outputs"]] == ["text_output", "finish_reason"]
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL
    assert config["model_transaction_policy"]["decoupled"] is True


def test_model_infer_returns_text(deployment):
    _, client, metrics_port = deployment
    result = client.infer(MODEL, [_text(), _scalar("max_tokens", 6, "INT32", np.int32)], request_id="u1")
    text = result.as_numpy("text_output")
    assert text.shape == (1,) and isinstance(text[0], bytes) and text[0]
    assert result.as_numpy("finish_reason")[0] == b"length"
    assert result.get_response().id == "u1"
    # Sampling options as request parameters, Triton-style, also reach the engine.
    result = client.infer(MODEL, [_text()], parameters={"max_tokens": 3, "temperature": 0.0})
    assert result.as_numpy("finish_reason")[0] == b"length"
    # gRPC requests are counted with the HTTP ones, and the metrics port serves them.
    body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'endpoint="kserve_infer"' in body and 'request_type="unary",status="success"' in body
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/other", timeout=5).status_code == 404


def test_stream_infer_streams_then_completes(deployment):
    _, client, _ = deployment
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(MODEL, [_text(), _scalar("max_tokens", 8, "INT32", np.int32),
                                          _scalar("streaming", True, "BOOL", np.bool_)], request_id="s1")
        chunks, finishes = [], []
        while True:
            result, error = responses.get(timeout=15)
            assert error is None, error
            resp = result.get_response()
            assert resp.id == "s1"
            chunks.append(result.as_numpy("text_output")[0])
            if result.as_numpy("finish_reason") is not None:
                finishes.append(result.as_numpy("finish_reason")[0])
            if resp.parameters["triton_final_response"].bool_param:
                break
        assert len(chunks) >= 2, chunks
        assert finishes == [b"length"]
        # A request that does not ask for streaming gets one aggregated response on the same stream.
        client.async_stream_infer(MODEL, [_text(), _scalar("max_tokens", 8, "INT32", np.int32)], request_id="s2")
        result, error = responses.get(timeout=15)
        assert error is None and result.get_response().id == "s2"
        assert b"".join(chunks) and result.as_numpy("finish_reason")[0] == b"length"
        # Errors arrive on the stream without ending it.
        client.async_stream_infer("no-such-model", [_text()], request_id="s3")
        result, error = responses.get(timeout=15)
        assert isinstance(error, InferenceServerException) and "NOT_FOUND" in str(error)
    finally:
        client.stop_stream()


def test_errors_map_to_grpc_status_codes(deployment):
    _, client, _ = deployment
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [_text()])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [_scalar("max_tokens", 4, "INT32", np.int32)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "text_input" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [_text(datatype="INT32")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "BYTES" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [_text(), _scalar("max_tokens", 0, "INT32", np.int32)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_http_api_keeps_working_in_the_same_process(deployment):
    dep, client, _ = deployment
    oc = openai.OpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0)
    assert oc.completions.create(model=MODEL, prompt="Hello", max_tokens=4).usage.completion_tokens == 4
    assert client.is_server_live()


def test_flag_without_the_grpc_extra_is_a_clear_error():
    # ``None`` in sys.modules makes ``import tritonclient`` fail, as on an install without the extra.
    code = ("import sys; sys.modules['tritonclient'] = None; from dynamo.frontend.__main__ import main; "
            "main(['--kserve-grpc-server', '--store-kv', 'mem'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--kserve-grpc-server needs the 'grpc' extra" in proc.stderr
