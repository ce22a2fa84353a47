"""KServe v2 tensors ↔ completion requests, following Triton's conventions for LLM models.

Request: ``text_input`` (BYTES, one element) is the prompt; ``streaming``/``stream`` (BOOL) asks
ModelStreamInfer for one response per detokenized chunk; ``max_tokens`` and the sampling fields
(``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ...) may come either as input tensors or as
request parameters (an input wins). Response: ``text_output`` (BYTES) and ``finish_reason`` (BYTES).

Tensor data may sit in the typed ``contents`` fields or in ``raw_input_contents`` (what ``tritonclient``
sends): both are read. Outputs are written as raw contents, which every client decodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamo.runtime.errors import InvalidArgument

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
STREAM_INPUTS = ("streaming", "stream")
#: optional scalar inputs / parameters → completion request field, and the KServe datatypes accepted
SAMPLING: dict[str, tuple[str, ...]] = {
    "max_tokens": ("INT32", "INT64", "UINT32", "UINT64"),
    "min_tokens": ("INT32", "INT64", "UINT32", "UINT64"),
    "top_k": ("INT32", "INT64", "UINT32", "UINT64"),
    "seed": ("INT32", "INT64", "UINT32", "UINT64"),
    "temperature": ("FP32", "FP64"),
    "top_p": ("FP32", "FP64"),
    "min_p": ("FP32", "FP64"),
    "presence_penalty": ("FP32", "FP64"),
    "frequency_penalty": ("FP32", "FP64"),
    "repetition_penalty": ("FP32", "FP64"),
    "ignore_eos": ("BOOL",),
    "stop": ("BYTES",),
}

_NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "FP32": np.float32, "FP64": np.float64}
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@dataclass
class TextRequest:
    """A decoded KServe request: the completion request body and whether the client wants a stream."""

    body: dict[str, Any]
    streaming: bool


def _split_bytes(raw: bytes) -> list[bytes]:
    """BYTES raw contents: each element is a little-endian u32 length and that many bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InvalidArgument("malformed BYTES tensor contents")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise InvalidArgument("malformed BYTES tensor contents")
        out.append(raw[i:i + n])
        i += n
    return out


def _tensor_values(tensor: Any, raw: bytes | None) -> list[Any]:
    dt = tensor.datatype
    if dt not in _CONTENTS:
        raise InvalidArgument(f"input '{tensor.name}': unsupported datatype {dt}")
    if raw is not None:
        if dt == "BYTES":
            return _split_bytes(raw)
        item = np.dtype(_NUMPY[dt]).itemsize
        if len(raw) % item:
            raise InvalidArgument(f"input '{tensor.name}': {len(raw)} bytes is not a whole number of {dt}")
        return np.frombuffer(raw, dtype=_NUMPY[dt]).tolist()
    return list(getattr(tensor.contents, _CONTENTS[dt]))


def _scalar(name: str, dt: str, values: list[Any]) -> Any:
    if name == "stop":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    if len(values) != 1:
        raise InvalidArgument(f"input '{name}' must hold exactly one element, got {len(values)}")
    v = values[0]
    if dt == "BOOL":
        return bool(v)
    if dt.startswith(("INT", "UINT")):
        return int(v)
    return float(v)


def _parameter(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def decode_request(req: Any) -> TextRequest:
    """Turn a ``ModelInferRequest`` into a completion request body; malformed input → InvalidArgument."""
    raws = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise InvalidArgument("raw_input_contents must hold one entry per input")
    inputs: dict[str, tuple[str, list[Any]]] = {}
    for i, tensor in enumerate(req.inputs):
        inputs[tensor.name] = (tensor.datatype, _tensor_values(tensor, raws[i] if raws else None))

    if TEXT_INPUT not in inputs:
        raise InvalidArgument(f"missing required input '{TEXT_INPUT}' (BYTES, one element)")
    dt, values = inputs.pop(TEXT_INPUT)
    if dt != "BYTES":
        raise InvalidArgument(f"input '{TEXT_INPUT}' must be BYTES, got {dt}")
    if len(values) != 1:
        raise InvalidArgument(f"input '{TEXT_INPUT}' must hold exactly one element, got {len(values)}")
    try:
        prompt = values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0])
    except UnicodeDecodeError:
        raise InvalidArgument(f"input '{TEXT_INPUT}' is not valid UTF-8") from None

    body: dict[str, Any] = {"model": req.model_name, "prompt": prompt}
    streaming = False
    # Request parameters first, so that an input tensor of the same name overrides them.
    for name, p in req.parameters.items():
        value = _parameter(p)
        if name in STREAM_INPUTS:
            streaming = bool(value)
        elif name in SAMPLING:
            body[name] = [value] if name == "stop" and isinstance(value, str) else value
    for name, (dt, values) in inputs.items():
        if name in STREAM_INPUTS:
            if dt != "BOOL":
                raise InvalidArgument(f"input '{name}' must be BOOL, got {dt}")
            streaming = bool(_scalar(name, dt, values))
        elif name in SAMPLING:
            if dt not in SAMPLING[name]:
                raise InvalidArgument(f"input '{name}' must be one of {', '.join(SAMPLING[name])}, got {dt}")
            body[name] = _scalar(name, dt, values)
        else:
            raise InvalidArgument(f"unknown input '{name}'")
    return TextRequest(body, streaming)


def _bytes_raw(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def encode_response(pb: Any, model: str, request_id: str, text: str, finish_reason: str | None,
                    final: bool) -> Any:
    """A ``ModelInferResponse`` carrying ``text_output`` (and ``finish_reason`` on the last one).

    ``triton_final_response`` tells a decoupled (streaming) client whether more responses follow.
    """
    resp = pb.ModelInferResponse(model_name=model, model_version="1", id=request_id)
    resp.outputs.add(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])
    resp.raw_output_contents.append(_bytes_raw(text))
    if finish_reason is not None:
        resp.outputs.add(name=FINISH_REASON, datatype="BYTES", shape=[1])
        resp.raw_output_contents.append(_bytes_raw(finish_reason))
    resp.parameters["triton_final_response"].bool_param = final
    return resp
