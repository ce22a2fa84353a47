"""Worker-side ``dynamo_component_*`` metrics (reference §4.7), recorded by the request-plane servers.

Labels ``dynamo_namespace``, ``dynamo_component``, ``dynamo_endpoint``. Served on the system status
server's ``/metrics`` (``status_server.py``). Each request touches the metrics a fixed number of
times (at admission and at completion), never once per streamed item: byte counts are summed locally.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("dynamo_namespace", "dynamo_component", "dynamo_endpoint")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ComponentMetrics:
    """One per process (owned by the runtime), shared by every served endpoint."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry if registry is not None else CollectorRegistry()
        self.started = time.monotonic()
        self.requests = Counter("dynamo_component_requests", "Requests admitted by this worker", LABELS,
                                registry=reg)
        self.inflight = Gauge("dynamo_component_inflight_requests", "Requests being served", LABELS,
                              registry=reg)
        self.duration = Histogram("dynamo_component_request_duration_seconds",
                                  "Time from admission to the end of the response stream", LABELS,
                                  buckets=_DURATION_BUCKETS, registry=reg)
        self.request_bytes = Counter("dynamo_component_request_bytes", "Request body bytes received",
                                     LABELS, registry=reg)
        self.response_bytes = Counter("dynamo_component_response_bytes", "Response item bytes sent",
                                      LABELS, registry=reg)
        self.errors = Counter("dynamo_component_errors", "Requests that ended with an error",
                              (*LABELS, "error_type"), registry=reg)
        self.cancellations = Counter("dynamo_component_cancellation", "Requests stopped or killed by the client",
                                     LABELS, registry=reg)
        uptime = Gauge("dynamo_component_uptime_seconds", "Seconds since this process's runtime started",
                       registry=reg)
        uptime.set_function(lambda: time.monotonic() - self.started)

    def for_endpoint(self, namespace: str, component: str, endpoint: str) -> EndpointMetrics:
        return EndpointMetrics(self, (namespace, component, endpoint))


class EndpointMetrics:
    """The labelled children of one endpoint, looked up once at registration."""

    __slots__ = ("_cancellations", "_errors", "_labels", "duration", "inflight", "request_bytes", "requests",
                 "response_bytes")

    def __init__(self, metrics: ComponentMetrics, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._errors = metrics.errors
        self.requests = metrics.requests.labels(*labels)
        self.inflight = metrics.inflight.labels(*labels)
        self.duration = metrics.duration.labels(*labels)
        self.request_bytes = metrics.request_bytes.labels(*labels)
        self.response_bytes = metrics.response_bytes.labels(*labels)
        self._cancellations = metrics.cancellations.labels(*labels)

    def started(self, body_bytes: int) -> float:
        self.requests.inc()
        self.inflight.inc()
        if body_bytes:
            self.request_bytes.inc(body_bytes)
        return time.monotonic()

    def finished(self, start: float, response_bytes: int, error_type: str | None, cancelled: bool) -> None:
        self.inflight.dec()
        self.duration.observe(time.monotonic() - start)
        if response_bytes:
            self.response_bytes.inc(response_bytes)
        if error_type is not None:
            self._errors.labels(*self._labels, error_type).inc()
        if cancelled:
            self._cancellations.inc()


def labels_from_path(path: str) -> tuple[str, str, str]:
    """``{id:x}/{ns}.{comp}.{ep}`` → ``(ns, comp, ep)`` (best effort: names are free-form)."""
    rest = path.split("/", 1)[-1]
    parts = rest.split(".", 2)
    while len(parts) < 3:
        parts.append("")
    return parts[0], parts[1], parts[2]
