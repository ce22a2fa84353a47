"""Event-plane Prometheus counters, labelled by topic and transport.

Module-level so that creating many publishers/subscribers (or re-importing) never registers twice.
"""

from __future__ import annotations

from prometheus_client import Counter

_LABELS = ("topic", "transport")

PUBLISHED = Counter(
    "dynamo_event_plane_published_total", "Events handed to the transport by publishers", _LABELS)
PUBLISH_FAILED = Counter(
    "dynamo_event_plane_publish_failed_total",
    "Events a publisher could not send (transport disconnected or buffer full); subscribers see a gap",
    _LABELS)
RECEIVED = Counter(
    "dynamo_event_plane_received_total", "Events delivered to subscribers (after dedupe)", _LABELS)
DROPPED = Counter(
    "dynamo_event_plane_dropped_total",
    "Events dropped by subscribers: duplicates, sequences older than the newest seen, or a full queue",
    _LABELS)
GAPS = Counter(
    "dynamo_event_plane_gaps_total", "Sequence gaps detected by subscribers (one per gap)", _LABELS)
MISSED = Counter(
    "dynamo_event_plane_missed_events_total", "Events known lost: the sum of all gap widths", _LABELS)
INVALID = Counter(
    "dynamo_event_plane_invalid_total",
    "Messages skipped because they were not valid event-plane frames or envelopes", _LABELS)
