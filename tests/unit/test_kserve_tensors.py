"""KServe v2 request decoding (Triton's LLM tensor conventions) and the gRPC status mapping."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dynamo.runtime import errors

pb = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient[grpc] (dev extra) not installed")
from dynamo.frontend.grpc.tensors import decode_request, encode_response  # noqa: E402

pytestmark = pytest.mark.unit


def _bytes_raw(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def _request(*inputs: tuple[str, str, bytes], **params: object) -> object:
    req = pb.ModelInferRequest(model_name="m", id="r")
    for name, dt, raw in inputs:
        req.inputs.add(name=name, datatype=dt, shape=[1])
        req.raw_input_contents.append(raw)
    for k, v in params.items():
        p = req.parameters[k]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            p.int64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = str(v)
    return req


def test_raw_inputs_and_parameters_become_a_completion_body():
    req = _request(("text_input", "BYTES", _bytes_raw("héllo".encode())),
                   ("max_tokens", "INT32", np.array([5], np.int32).tobytes()),
                   ("streaming", "BOOL", b"\x01"),
                   ("stop", "BYTES", _bytes_raw(b"a", b"bc")),
                   temperature=0.5, max_tokens=99, triton_enable_empty_final_response=True)
    out = decode_request(req)
    assert out.streaming is True
    # The input tensor wins over the request parameter of the same name; unknown parameters are ignored.
    assert out.body == {"model": "m", "prompt": "héllo", "max_tokens": 5, "temperature": 0.5, "stop": ["a", "bc"]}


def test_typed_contents_are_read_too():
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"hi")
    t = req.inputs.add(name="top_p", datatype="FP32", shape=[1])
    t.contents.fp32_contents.append(0.25)
    out = decode_request(req)
    assert out.body == {"model": "m", "prompt": "hi", "top_p": 0.25} and out.streaming is False


@pytest.mark.parametrize(("inputs", "message"), [
    ([], "missing required input 'text_input'"),
    ([("text_input", "INT32", b"\0\0\0\0")], "must be BYTES"),
    ([("text_input", "BYTES", _bytes_raw(b"a", b"b"))], "exactly one element"),
    ([("text_input", "BYTES", b"\x09\0\0\0ab")], "malformed BYTES"),
    ([("text_input", "BYTES", _bytes_raw(b"\xff"))], "not valid UTF-8"),
    ([("text_input", "BYTES", _bytes_raw(b"a")), ("max_tokens", "FP32", b"\0\0\0\0")], "must be one of INT32"),
    ([("text_input", "BYTES", _bytes_raw(b"a")), ("streaming", "INT32", b"\0\0\0\0")], "must be BOOL"),
    ([("text_input", "BYTES", _bytes_raw(b"a")), ("max_tokens", "INT32", b"\0\0")], "whole number"),
    ([("text_input", "BYTES", _bytes_raw(b"a")), ("bogus", "INT32", b"\0\0\0\0")], "unknown input 'bogus'"),
])
def test_bad_inputs_are_invalid_argument(inputs, message):
    with pytest.raises(errors.InvalidArgument, match=message):
        decode_request(_request(*inputs))


def test_response_carries_text_finish_reason_and_final_flag():
    resp = encode_response(pb, "m", "r", "héllo", "length", final=True)
    assert [o.name for o in resp.outputs] == ["text_output", "finish_reason"]
    assert resp.raw_output_contents[0] == _bytes_raw("héllo".encode())
    assert resp.parameters["triton_final_response"].bool_param is True
    mid = encode_response(pb, "m", "r", "x", None, final=False)
    assert [o.name for o in mid.outputs] == ["text_output"]
    assert mid.parameters["triton_final_response"].bool_param is False


@pytest.mark.parametrize(("error", "code"), [
    (errors.InvalidArgument("x"), "INVALID_ARGUMENT"),
    (errors.NotFound("x"), "NOT_FOUND"),
    (errors.Unavailable("x"), "UNAVAILABLE"),
    (errors.CannotConnect("x"), "UNAVAILABLE"),
    (errors.ResourceExhausted("x"), "RESOURCE_EXHAUSTED"),
    (errors.Cancelled("x"), "CANCELLED"),
    (errors.Unsupported("x"), "UNIMPLEMENTED"),
    (errors.Disconnected("x"), "INTERNAL"),
    (ValueError("x"), "INTERNAL"),
])
def test_grpc_status_mapping(error, code):
    import grpc

    assert errors.grpc_status(error) == code
    assert grpc.StatusCode[code]  # a real status code name
