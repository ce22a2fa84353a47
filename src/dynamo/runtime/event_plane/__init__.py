"""Event plane: topic pub/sub for KV events, load metrics and router replica sync (DESIGN §1, §4).

``create_event_plane("zmq" | "nats", runtime)`` builds the transport; publishers and subscribers
come from ``await plane.publisher(ns, comp, topic)`` / ``await plane.subscriber(ns, comp, topic)``
(``comp=None`` for namespace-scoped topics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamo.runtime import errors
from dynamo.runtime.event_plane.base import EventPlane, EventPublisher, EventSubscriber
from dynamo.runtime.event_plane.envelope import Envelope, InvalidEvent, SequenceTracker, subject

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

__all__ = [
    "EVENT_PLANE_KINDS",
    "Envelope",
    "EventPlane",
    "EventPublisher",
    "EventSubscriber",
    "InvalidEvent",
    "SequenceTracker",
    "create_event_plane",
    "subject",
]

EVENT_PLANE_KINDS = ("zmq", "nats")


def create_event_plane(kind: str, runtime: DistributedRuntime) -> EventPlane:
    """The event plane named by ``--event-plane`` / ``DYN_EVENT_PLANE``."""
    name = (kind or "").strip().lower()
    if name == "zmq":
        from dynamo.runtime.event_plane.zmq import ZmqEventPlane

        return ZmqEventPlane(runtime)
    if name == "nats":
        from dynamo.runtime.event_plane.nats import NatsEventPlane

        return NatsEventPlane(runtime)
    raise errors.ConfigError(
        f"unknown event plane {kind!r}: expected one of {', '.join(EVENT_PLANE_KINDS)} "
        "(--event-plane / DYN_EVENT_PLANE)")
