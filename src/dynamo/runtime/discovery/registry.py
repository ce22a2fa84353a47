"""Discovery records on top of a store: instances, model cards and event channels (DESIGN §4).

Keys: ``v1/instances/{ns}/{comp}/{ep}/{id:x}``, ``v1/mdc/{ns}/{comp}/{ep}/{id:x}``,
``v1/event_channels/{ns}/{comp}/{topic}/{id:x}``; values are JSON. Model files shipped with cards
live under ``v1/model_files/{digest}/{chunk:05d}`` (zlib-compressed bytes, see ``llm/model_files.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec

INSTANCES = "v1/instances"
MODEL_CARDS = "v1/mdc"
EVENT_CHANNELS = "v1/event_channels"
MODEL_FILES = "v1/model_files"


class Instance(msgspec.Struct, frozen=True):
    """One process's registration of an endpoint. ``transport`` is ``{"tcp": "host:port"}``."""

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    transport: dict[str, str]

    @property
    def address(self) -> str:
        return next(iter(self.transport.values()))

    @property
    def url(self) -> str:
        return f"dyn://{self.namespace}.{self.component}.{self.endpoint}"


class ModelEntry(msgspec.Struct, frozen=True):
    """A model card registered for one instance of an endpoint."""

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    card: dict[str, Any]


class EventChannel(msgspec.Struct, frozen=True):
    """An event-plane publisher: ``{"transport": "zmq", "address": ...}`` or nats with a subject."""

    namespace: str
    component: str
    topic: str
    instance_id: int
    transport: str
    address: str = ""
    subject: str = ""


def instance_key(ns: str, comp: str, ep: str, instance_id: int) -> str:
    return f"{INSTANCES}/{ns}/{comp}/{ep}/{instance_id:x}"


def instances_prefix(ns: str | None = None, comp: str | None = None, ep: str | None = None) -> str:
    return _prefix(INSTANCES, ns, comp, ep)


def model_key(ns: str, comp: str, ep: str, instance_id: int) -> str:
    return f"{MODEL_CARDS}/{ns}/{comp}/{ep}/{instance_id:x}"


def models_prefix(ns: str | None = None) -> str:
    return _prefix(MODEL_CARDS, ns)


def event_channel_key(ns: str, comp: str, topic: str, instance_id: int) -> str:
    return f"{EVENT_CHANNELS}/{ns}/{comp}/{topic}/{instance_id:x}"


def event_channels_prefix(ns: str, comp: str, topic: str) -> str:
    return _prefix(EVENT_CHANNELS, ns, comp, topic)


def model_files_prefix(digest: str) -> str:
    return f"{MODEL_FILES}/{digest}/"


def model_files_chunk_key(digest: str, index: int) -> str:
    return f"{MODEL_FILES}/{digest}/{index:05d}"


def _prefix(root: str, *parts: str | None) -> str:
    out = root + "/"
    for part in parts:
        if part is None:
            break
        out += f"{part}/"
    return out


encode = msgspec.json.encode


def decode_instance(raw: bytes) -> Instance:
    return msgspec.json.decode(raw, type=Instance)


def decode_model(raw: bytes) -> ModelEntry:
    return msgspec.json.decode(raw, type=ModelEntry)


def decode_event_channel(raw: bytes) -> EventChannel:
    return msgspec.json.decode(raw, type=EventChannel)
