"""The planner's own Prometheus metrics (``dynamo_planner_*``): what it observed and predicted, what it
wants and what runs, and every decision it took (or, in advisory mode, would have taken)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class PlannerMetrics:
    def __init__(self, prefix: str = "dynamo_planner") -> None:
        self.registry = reg = CollectorRegistry()
        p = prefix
        self.observed = Gauge(f"{p}_observed", "Last interval's traffic (requests, isl, osl, ttft_s, itl_s)",
                              ["quantity"], registry=reg)
        self.predicted = Gauge(f"{p}_predicted", "Next interval's predicted traffic (requests, isl, osl)",
                               ["quantity"], registry=reg)
        self.correction = Gauge(f"{p}_correction_factor", "Observed / profiled latency", ["phase"], registry=reg)
        self.desired = Gauge(f"{p}_desired_replicas", "Replicas the planner wants", ["pool"], registry=reg)
        self.actual = Gauge(f"{p}_actual_replicas", "Replicas the connector reports", ["pool"], registry=reg)
        self.estimated = Gauge(f"{p}_estimated_latency_seconds", "Load-based estimate, worst engine",
                               ["pool", "kind"], registry=reg)
        self.decisions = Counter(f"{p}_decisions", "Scaling decisions",
                                 ["pool", "source", "direction", "applied"], registry=reg)

    def render(self) -> bytes:
        return generate_latest(self.registry)
