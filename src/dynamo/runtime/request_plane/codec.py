"""Frames of the TCP request plane: ``u32 BE length | msgpack map`` (DESIGN §4).

Client→server: ``req`` (sid, ep, headers, body), ``stop``, ``kill``.
Server→client: ``ack``, ``data`` (body), ``end``, ``err`` (error ``{type, message}``).
Either way: ``ping`` / ``pong`` (sid 0), the connection heartbeat (see ``heartbeat.py``).
Bodies are embedded msgpack (``msgspec.Raw``), decoded only by whoever knows their type.
"""

from __future__ import annotations

import struct

import msgspec

MAX_FRAME_BYTES = 32 * 1024 * 1024
HEADER = struct.Struct(">I")

REQ, STOP, KILL = "req", "stop", "kill"
ACK, DATA, END, ERR = "ack", "data", "end", "err"
PING, PONG = "ping", "pong"


class Frame(msgspec.Struct, omit_defaults=True):
    t: str
    sid: int
    ep: str | None = None
    headers: dict[str, str] | None = None
    body: msgspec.Raw = msgspec.Raw()  # empty when absent
    error: dict[str, str] | None = None
    #: NATS only: the subject the stream's frames go back to (TCP and HTTP answer on the connection)
    reply: str | None = None


class FrameTooLarge(ValueError):
    pass


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)
_pack_len = HEADER.pack


def encode_frame(frame: Frame) -> bytes:
    payload = _encoder.encode(frame)
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return _pack_len(len(payload)) + payload


def decode_frame(payload: bytes) -> Frame:
    """Raises ``msgspec.DecodeError``/``ValidationError`` on malformed bytes."""
    return _decoder.decode(payload)


def encode_body(obj: object) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(obj))


def data_frame(sid: int, body: msgspec.Raw) -> bytes:
    return encode_frame(Frame(DATA, sid, body=body))


class FrameReader:
    """Incremental frame parser for ``asyncio.Protocol.data_received``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append bytes; return complete frame payloads. Raises FrameTooLarge for a hostile prefix."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME_BYTES:
                raise FrameTooLarge(f"frame length {length} exceeds {MAX_FRAME_BYTES}")
            end = pos + 4 + length
            if end > n:
                break
            out.append(bytes(buf[pos + 4 : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out


PING_BYTES = encode_frame(Frame(PING, 0))
PONG_BYTES = encode_frame(Frame(PONG, 0))
