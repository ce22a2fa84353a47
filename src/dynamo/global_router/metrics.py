"""Global router metrics, ``dynamo_global_router_*``.

Beyond request counts and selection latency, every pool gets the latency it actually delivered (TTFT
and per-request mean ITL, measured at the global router from dispatch to the pool's router) next to
the targets that sent requests there, and a count of requests whose target it missed: an operator
sees per pool whether it serves the SLA its grid cells promise.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

#: 1 ms .. ~2 min, roughly x2 per bucket: wide enough for a premium pool and a batch pool alike
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SELECTION_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class GlobalRouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry or CollectorRegistry()
        p = "dynamo_global_router"
        pool = ["pool_type", "pool"]
        self.requests = Counter(f"{p}_requests", "Requests forwarded, by pool type, pool (namespace) and status "
                                "(success, error, retried: failed over to a faster pool, cancelled: the caller left)",
                                [*pool, "status"], registry=reg)
        self.retries = Counter(f"{p}_priority_retries", "Requests moved to a faster pool after a pool failed",
                               ["pool_type", "from_pool", "to_pool"], registry=reg)
        self.selection = Histogram(f"{p}_selection_seconds", "Time to choose a pool (grid lookup and overrides)",
                                   ["pool_type"], buckets=SELECTION_BUCKETS, registry=reg)
        self.ttft = Histogram(f"{p}_pool_ttft_seconds", "Observed time to first token per pool "
                              "(prefill pools: time to the prefill result)", pool, buckets=LATENCY_BUCKETS,
                              registry=reg)
        self.itl = Histogram(f"{p}_pool_itl_seconds", "Observed mean inter-token latency of each request, per pool",
                             pool, buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft_target = Histogram(f"{p}_pool_ttft_target_seconds", "TTFT targets of the requests routed to "
                                     "each pool", pool, buckets=LATENCY_BUCKETS, registry=reg)
        self.itl_target = Histogram(f"{p}_pool_itl_target_seconds", "ITL targets of the requests routed to "
                                    "each pool", pool, buckets=LATENCY_BUCKETS, registry=reg)
        self.sla_misses = Counter(f"{p}_pool_sla_misses", "Requests whose observed TTFT or mean ITL exceeded the "
                                  "target that routed them", [*pool, "sla"], registry=reg)

    def render(self) -> bytes:
        return generate_latest(self.registry)
