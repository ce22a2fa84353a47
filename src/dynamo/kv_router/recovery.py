"""Rebuilding a router's view of a worker's cache from the worker itself (reference §2.7).

Pub/sub loses events a router was not subscribed for (it started after the worker, a ZMQ subscriber
was still joining, NATS was down). Workers therefore serve ``kv_dump`` next to ``generate``: a snapshot
of their cached blocks as stored events plus the last event id per dp rank. A router asks for it when
it first sees a worker and whenever it detects a gap, replaces that worker's part of its index with the
snapshot, then replays the live events it buffered meanwhile that are newer than the snapshot.
"""

from __future__ import annotations

from typing import Any

from dynamo.kv_router.protocols import RouterEvent

KV_DUMP_ENDPOINT = "kv_dump"


def parse_dump(reply: Any) -> tuple[dict[int, int], list[RouterEvent]]:
    """``(last event id per dp rank, events)`` from a ``kv_dump`` reply; ValueError if malformed."""
    if not isinstance(reply, dict):
        raise ValueError("kv_dump reply must be an object")
    last = {int(k): int(v) for k, v in (reply.get("last_event_ids") or {}).items()}
    events = [RouterEvent.from_wire(e) for e in reply.get("events") or []]
    return last, events


def newer_than(event: RouterEvent, last_ids: dict[int, int]) -> bool:
    last = last_ids.get(event.event.dp_rank)
    return last is None or event.event.event_id > last
