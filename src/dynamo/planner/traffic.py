"""What the frontend served over an interval (reference §7.1 step 1), from one of two sources behind
:class:`TrafficSource`:

* :class:`PrometheusTraffic`: a Prometheus server scraping the frontend, queried over its HTTP API
  (``PROMETHEUS_ENDPOINT``) with ``increase()`` over the interval, as the reference does;
* :class:`FrontendScrapeTraffic`: the frontend's ``/metrics`` read directly, the interval's traffic
  being the difference between two scrapes (a laptop with no Prometheus).

Averages are ``Σ increase(x_sum) / Σ increase(x_count)``; a quantity with no samples is NaN.
"""

from __future__ import annotations

import math
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dynamo.planner.throughput import IntervalStats
from dynamo.runtime.errors import Unavailable

# (IntervalStats field, histogram suffix)
HISTOGRAMS = (
    ("isl", "input_sequence_tokens"),
    ("osl", "output_sequence_tokens"),
    ("ttft_s", "time_to_first_token_seconds"),
    ("itl_s", "inter_token_latency_seconds"),
    ("request_duration_s", "request_duration_seconds"),
)


class TrafficSource(Protocol):
    async def observe(self, interval_s: float) -> IntervalStats:
        """Traffic over the last ``interval_s`` seconds (or since the previous call)."""
        ...

    async def close(self) -> None: ...


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class PrometheusTraffic:
    def __init__(self, endpoint: str, prefix: str = "dynamo_frontend", model: str | None = None,
                 timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.prefix = prefix
        self.model = model
        self._http = httpx.AsyncClient(timeout=timeout)

    def _selector(self) -> str:
        if not self.model:
            return ""
        escaped = self.model.replace("\\", "\\\\").replace('"', '\\"')
        return f'{{model="{escaped}"}}'

    def queries(self, interval_s: float) -> dict[str, str]:
        """PromQL per quantity; the interval is rounded up to whole seconds."""
        window = f"[{max(1, math.ceil(interval_s))}s]"
        sel = self._selector()
        p = self.prefix
        out = {"num_requests": f"sum(increase({p}_requests_total{sel}{window}))"}
        for field, name in HISTOGRAMS:
            out[field] = (f"sum(increase({p}_{name}_sum{sel}{window})) / "
                          f"sum(increase({p}_{name}_count{sel}{window}))")
        return out

    async def query(self, promql: str) -> float:
        """One instant query's scalar result; NaN when the vector is empty (no traffic yet)."""
        try:
            resp = await self._http.get(f"{self.endpoint}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise Unavailable(f"Prometheus at {self.endpoint} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise Unavailable(f"Prometheus query failed ({resp.status_code}): {resp.text[:200]}")
        body = resp.json()
        if body.get("status") != "success":
            raise Unavailable(f"Prometheus query failed: {body.get('error', body)}")
        result = body["data"]["result"]
        if not result:
            return math.nan
        return float(result[0]["value"][1])

    async def observe(self, interval_s: float) -> IntervalStats:
        values = {k: await self.query(q) for k, q in self.queries(interval_s).items()}
        if math.isnan(values["num_requests"]):
            values["num_requests"] = 0.0
        return IntervalStats(**values)

    async def close(self) -> None:
        await self._http.aclose()


Snapshot = dict[str, float]


def parse_snapshot(text: str, prefix: str = "dynamo_frontend", model: str | None = None) -> Snapshot:
    """The counters the planner needs from a ``/metrics`` body, summed over label sets (one model
    when ``model`` is given): ``requests`` and each histogram's ``{name}_sum`` / ``{name}_count``."""
    wanted = {f"{prefix}_requests_total": "requests"}
    for _, name in HISTOGRAMS:
        wanted[f"{prefix}_{name}_sum"] = f"{name}_sum"
        wanted[f"{prefix}_{name}_count"] = f"{name}_count"
    out: Snapshot = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is None or (model is not None and sample.labels.get("model") != model):
                continue
            out[key] += sample.value
    return out


def stats_between(before: Snapshot, after: Snapshot) -> IntervalStats:
    """Traffic between two snapshots. A counter that went down means the frontend restarted: the later
    snapshot alone is then the best estimate of the interval."""
    base = before if all(after.get(k, 0.0) >= v for k, v in before.items()) else dict.fromkeys(before, 0.0)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - base.get(key, 0.0)

    values = {field: _ratio(delta(f"{name}_sum"), delta(f"{name}_count")) for field, name in HISTOGRAMS}
    return IntervalStats(num_requests=delta("requests"), **values)


class FrontendScrapeTraffic:
    """Reads the frontend's ``/metrics`` itself; the first call primes the baseline and reports idle."""

    def __init__(self, url: str, prefix: str = "dynamo_frontend", model: str | None = None,
                 timeout: float = 10.0) -> None:
        self.url = url
        self.prefix = prefix
        self.model = model
        self._http = httpx.AsyncClient(timeout=timeout)
        self._last: Snapshot | None = None

    async def scrape(self) -> Snapshot:
        try:
            resp = await self._http.get(self.url)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise Unavailable(f"frontend metrics at {self.url} unreachable: {exc}") from exc
        return parse_snapshot(resp.text, self.prefix, self.model)

    async def observe(self, interval_s: float) -> IntervalStats:
        snap = await self.scrape()
        before, self._last = self._last, snap
        if before is None:
            before = snap
        return stats_between(before, snap)

    async def close(self) -> None:
        await self._http.aclose()
