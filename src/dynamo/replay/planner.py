"""The planner in a replay's simulated time (``python -m dynamo.replay --planner``).

The decisions are made by :class:`dynamo.planner.core.Planner` itself — the object ``python -m
dynamo.planner`` runs, with its predictors, throughput math, load-based scaler, scale-down window and
pending rule — behind the two seams it already has:

* :class:`ReplayConnector` (a :class:`~dynamo.planner.connectors.base.Connector`) hands each decision to
  the simulation, which starts workers (ready after a simulated start-up delay) or drains them (no new
  requests, removed once idle), newest first as the ``local`` connector does. Like that connector it is
  not ready while a worker is starting or draining, so the planner holds further changes until then.
* :class:`ReplayTraffic` (a :class:`~dynamo.planner.traffic.TrafficSource`) reads cumulative counters
  kept the way the frontend keeps its histograms (TTFT at the first token; requests, ISL, OSL,
  duration and inter-token gaps when a request completes) and returns the difference since its last
  call, through the same :func:`~dynamo.planner.traffic.stats_between` a ``/metrics`` scrape uses.

Forward-pass reports come from a :class:`~dynamo.llm.forward_pass.ForwardPassWindow` per worker fed with
simulated seconds, exactly what a live mocker publishes.

The planner's steps are coroutines only because live connectors and traffic sources do I/O; these two
never suspend, so :func:`run_step` drives a step to completion on the spot, with no event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.planner.throughput import IntervalStats
from dynamo.planner.traffic import HISTOGRAMS, Snapshot, stats_between

T = TypeVar("T")

#: the pool a replay scales: its workers are aggregated, which the planner calls the decode pool
POOL = "decode"


def run_step(coro: Coroutine[Any, Any, T]) -> T:
    """Run a planner step whose awaits never suspend (the replay's connector and traffic source)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a planner step awaited real I/O inside a replay")


class FrontendCounters:
    """What a frontend's ``/metrics`` would hold, as the :func:`~dynamo.planner.traffic.parse_snapshot`
    keys: ``requests`` and each histogram's ``{name}_sum`` / ``{name}_count``."""

    def __init__(self) -> None:
        self.values: Snapshot = {"requests": 0.0}
        for _, name in HISTOGRAMS:
            self.values[f"{name}_sum"] = 0.0
            self.values[f"{name}_count"] = 0.0

    def first_token(self, ttft_s: float) -> None:
        v = self.values
        v["time_to_first_token_seconds_sum"] += ttft_s
        v["time_to_first_token_seconds_count"] += 1

    def completed(self, isl: int, osl: int, first_s: float, last_s: float, duration_s: float) -> None:
        v = self.values
        v["requests"] += 1
        v["input_sequence_tokens_sum"] += isl
        v["input_sequence_tokens_count"] += 1
        v["output_sequence_tokens_sum"] += osl
        v["output_sequence_tokens_count"] += 1
        v["request_duration_seconds_sum"] += duration_s
        v["request_duration_seconds_count"] += 1
        if osl > 1:
            # every gap between consecutive tokens is one ITL observation; they add up to last − first
            v["inter_token_latency_seconds_sum"] += last_s - first_s
            v["inter_token_latency_seconds_count"] += osl - 1


class ReplayTraffic:
    """A :class:`~dynamo.planner.traffic.TrafficSource` over :class:`FrontendCounters`; each instance
    keeps its own baseline, as each live scrape source does."""

    def __init__(self, counters: FrontendCounters) -> None:
        self.counters = counters
        self._base = dict(counters.values)

    async def observe(self, interval_s: float) -> IntervalStats:
        after = dict(self.counters.values)
        stats = stats_between(self._base, after)
        self._base = after
        return stats

    async def close(self) -> None:
        pass


class ReplayConnector(Connector):
    """Replicas of the replay's one pool; decisions go to ``resize(n)``, readiness from ``ready()``."""

    name = "replay"

    def __init__(self, replicas: Callable[[], int], resize: Callable[[int], None], ready: Callable[[], bool]) -> None:
        self._replicas = replicas
        self._resize = resize
        self._ready = ready

    async def current_replicas(self) -> dict[str, int]:
        return {POOL: self._replicas()}

    async def set_component_replicas(self, targets: list[TargetReplica], blocking: bool = False) -> None:
        for t in targets:
            if t.sub_component_type == POOL:
                self._resize(t.desired_replicas)

    async def is_ready(self) -> bool:
        return self._ready()


@dataclass
class FleetTimeline:
    """Workers over simulated time: a point at every change, and the totals the report shows.

    ``provisioned`` counts every worker holding a GPU: starting, serving or draining.
    """

    points: list[tuple[float, int, int, int]] = field(default_factory=list)  # (ms, serving, starting, draining)
    scale_ups: int = 0
    scale_downs: int = 0

    def record(self, now_ms: float, serving: int, starting: int, draining: int) -> None:
        if self.points and self.points[-1][0] == now_ms:
            self.points[-1] = (now_ms, serving, starting, draining)
        else:
            self.points.append((now_ms, serving, starting, draining))

    def worker_seconds(self, end_ms: float) -> float:
        total = 0.0
        for (t0, s, st, d), nxt in zip(self.points, [*self.points[1:], None], strict=True):
            t1 = end_ms if nxt is None else nxt[0]
            total += (s + st + d) * max(0.0, t1 - t0) / 1000.0
        return total

    def peak(self) -> int:
        return max((s + st + d for _, s, st, d in self.points), default=0)

    def summary(self, end_ms: float) -> dict[str, Any]:
        return {
            "worker_seconds": self.worker_seconds(end_ms),
            "peak_workers": self.peak(),
            "min_serving_workers": min((s for _, s, _, _ in self.points), default=0),
            "final_serving_workers": self.points[-1][1] if self.points else 0,
            "scale_up_workers": self.scale_ups,
            "scale_down_workers": self.scale_downs,
        }

    def to_json(self) -> list[dict[str, float]]:
        return [{"time_ms": t, "serving": s, "starting": st, "draining": d} for t, s, st, d in self.points]
