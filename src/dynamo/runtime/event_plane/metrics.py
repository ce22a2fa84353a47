"""Event-plane Prometheus counters, labelled by topic and transport.

Hot paths only bump plain ints on an :class:`EventCounts` (one per publisher/subscriber); a single
collector, registered once at import, sums them into ``dynamo_event_plane_*_total`` counters at
scrape time. Counts of closed publishers/subscribers are folded into retired totals so the
counters stay monotonic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

PREFIX = "dynamo_event_plane_"

# field on EventCounts -> (metric name without prefix/_total, help)
COUNTERS: dict[str, tuple[str, str]] = {
    "published": ("published", "Events handed to the transport by publishers"),
    "publish_failed": ("publish_failed",
                       "Events a publisher could not send (transport disconnected or buffer full)"),
    "received": ("received", "Events delivered to subscribers after dedupe"),
    "dropped": ("dropped",
                "Events dropped by subscribers: duplicates, sequences older than the newest seen, full queue"),
    "gaps": ("gaps", "Sequence gaps detected by subscribers (one per gap)"),
    "missed": ("missed_events", "Events known lost: the sum of all gap widths"),
    "invalid": ("invalid", "Messages skipped as invalid event-plane frames or envelopes"),
}


class EventCounts:
    """Plain counters for one publisher or subscriber."""

    __slots__ = ("dropped", "gaps", "invalid", "missed", "publish_failed", "published", "received",
                 "topic", "transport")

    def __init__(self, topic: str, transport: str) -> None:
        self.topic = topic
        self.transport = transport
        self.published = 0
        self.publish_failed = 0
        self.received = 0
        self.dropped = 0
        self.gaps = 0
        self.missed = 0
        self.invalid = 0


_lock = threading.Lock()
_live: dict[int, EventCounts] = {}
_retired: dict[tuple[str, str, str], int] = {}


def track(topic: str, transport: str) -> EventCounts:
    counts = EventCounts(topic, transport)
    with _lock:
        _live[id(counts)] = counts
    return counts


def retire(counts: EventCounts) -> None:
    with _lock:
        if _live.pop(id(counts), None) is None:
            return
        for field in COUNTERS:
            key = (field, counts.topic, counts.transport)
            _retired[key] = _retired.get(key, 0) + getattr(counts, field)


def totals() -> dict[tuple[str, str, str], int]:
    """(field, topic, transport) -> count, over live and retired publishers/subscribers."""
    with _lock:
        out = dict(_retired)
        for counts in _live.values():
            for field in COUNTERS:
                key = (field, counts.topic, counts.transport)
                out[key] = out.get(key, 0) + getattr(counts, field)
    return out


class EventPlaneCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        values = totals()
        for field, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, doc, labels=["topic", "transport"])
            for (f, topic, transport), value in values.items():
                if f == field:
                    family.add_metric([topic, transport], value)
            yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        for name, doc in COUNTERS.values():
            yield CounterMetricFamily(PREFIX + name, doc, labels=["topic", "transport"])


COLLECTOR = EventPlaneCollector()
try:
    REGISTRY.register(COLLECTOR)
except ValueError:  # a re-imported copy of this module: the first registration already serves these
    pass
