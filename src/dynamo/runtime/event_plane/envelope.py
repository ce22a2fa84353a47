"""Event-plane wire format (DESIGN §4): the envelope, subjects, ZMQ frames and sequence tracking.

Pure logic: no asyncio, no I/O. Every event travels as an :class:`Envelope` encoded as msgpack with
named fields; its ``payload`` is itself the msgpack of the event object.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec

ZMQ_FRAME_VERSION = 1
_U64 = struct.Struct(">Q")
_FRAME_HEADER = struct.Struct(">BI")


class Envelope(msgspec.Struct):
    """One event as it travels: who sent it, its place in that publisher's stream, and the payload."""

    publisher_id: int
    sequence: int
    published_at_ms: int
    topic: str
    payload: bytes

    def decode(self, type: Any = None) -> Any:
        """Decode the payload into ``type`` (a msgspec Struct, dict, ...); builtins if None."""
        return decode_payload(self.payload, type)


class InvalidEvent(ValueError):
    """Bytes that are not a valid event-plane message (bad frames, version or envelope)."""


_envelope_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def subject(namespace: str, component: str | None, topic: str) -> str:
    """``namespace.{ns}[.component.{comp}].{topic}``."""
    if component:
        return f"namespace.{namespace}.component.{component}.{topic}"
    return f"namespace.{namespace}.{topic}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_payload(obj: Any) -> bytes:
    return _payload_encoder.encode(obj)


def decode_payload(payload: bytes, type: Any = None) -> Any:
    key = Any if type is None else type
    decoder = _payload_decoders.get(key)
    if decoder is None:
        decoder = _payload_decoders[key] = msgspec.msgpack.Decoder(key)
    return decoder.decode(payload)


def encode_envelope(envelope: Envelope) -> bytes:
    return _envelope_encoder.encode(envelope)


def decode_envelope(data: bytes | memoryview) -> Envelope:
    try:
        return _envelope_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEvent(f"undecodable envelope: {exc}") from exc


# -- ZMQ multipart ------------------------------------------------------------------------------


def zmq_frames(topic: bytes, envelope: Envelope) -> list[bytes]:
    """``[topic, publisher_id u64 BE, sequence u64 BE, u8 version | u32 BE len | envelope]``."""
    body = encode_envelope(envelope)
    return [
        topic,
        _U64.pack(envelope.publisher_id),
        _U64.pack(envelope.sequence),
        _FRAME_HEADER.pack(ZMQ_FRAME_VERSION, len(body)) + body,
    ]


def zmq_header(frames: list[bytes]) -> tuple[int, int]:
    """(publisher_id, sequence) from the routing frames, so duplicates are dropped before decoding."""
    if len(frames) != 4 or len(frames[1]) != 8 or len(frames[2]) != 8:
        raise InvalidEvent(f"expected 4 frames [topic, publisher, sequence, frame], got {len(frames)}")
    return _U64.unpack(frames[1])[0], _U64.unpack(frames[2])[0]


def zmq_envelope(frame: bytes) -> Envelope:
    if len(frame) < _FRAME_HEADER.size:
        raise InvalidEvent("frame shorter than its header")
    version, length = _FRAME_HEADER.unpack_from(frame)
    if version != ZMQ_FRAME_VERSION:
        raise InvalidEvent(f"unsupported frame version {version}")
    if length != len(frame) - _FRAME_HEADER.size:
        raise InvalidEvent(f"frame length {length} does not match body of {len(frame) - _FRAME_HEADER.size}")
    return decode_envelope(memoryview(frame)[_FRAME_HEADER.size:])


# -- ordering -------------------------------------------------------------------------------------


class Verdict(enum.IntEnum):
    FIRST = 0  # first message seen from this publisher: accepted, whatever its sequence
    NEXT = 1  # the expected sequence
    GAP = 2  # accepted, but sequences between the expected one and this one were lost
    DUPLICATE = 3  # already seen (or older than the newest seen): drop


GapCallback = Callable[[int, int, int], None]


class SequenceTracker:
    """Per-publisher expected next sequence: dedupes and detects gaps.

    A subscriber joining late (the ZMQ slow joiner, or any subscriber started after the publisher)
    sees a stream starting above 0; that first message is not a gap.
    """

    __slots__ = ("duplicates", "expected", "gaps", "missed", "restarts")

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}
        self.duplicates = 0
        self.gaps = 0
        self.missed = 0
        self.restarts = 0

    def observe(self, publisher_id: int, sequence: int) -> Verdict:
        expected = self.expected.get(publisher_id)
        if expected is None:
            self.expected[publisher_id] = sequence + 1
            return Verdict.FIRST
        if sequence == expected:
            self.expected[publisher_id] = sequence + 1
            return Verdict.NEXT
        if sequence < expected:
            if sequence == 0 and expected > 1:
                # Neither transport redelivers, so a fresh 0 is the same publisher id restarted
                # (e.g. a worker re-created with an explicit id): start its stream over.
                self.expected[publisher_id] = 1
                self.restarts += 1
                return Verdict.FIRST
            self.duplicates += 1
            return Verdict.DUPLICATE
        self.expected[publisher_id] = sequence + 1
        self.gaps += 1
        self.missed += sequence - expected
        return Verdict.GAP

    def forget(self, publisher_id: int) -> None:
        self.expected.pop(publisher_id, None)

    def publishers(self) -> list[int]:
        return list(self.expected)
