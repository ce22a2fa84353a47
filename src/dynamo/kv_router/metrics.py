"""KV router Prometheus metrics (reference §4.7): hit rate, events applied, router overhead."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_MS_BUCKETS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]
#: predicted − engine-reported cached tokens: negative = the engine had more than the router knew
_ERROR_BUCKETS = [-16384, -4096, -1024, -256, -64, -1, 0, 64, 256, 1024, 4096, 16384]


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self.requests = Counter("dynamo_component_router_requests", "Requests routed by the KV router",
                                ["model"], registry=reg)
        self.kv_hit_rate = Histogram("dynamo_component_router_kv_hit_rate",
                                     "Fraction of prompt blocks already cached on the chosen worker", ["model"],
                                     buckets=[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], registry=reg)
        self.cached_tokens = Counter("dynamo_component_router_cached_tokens",
                                     "Prompt tokens predicted cached on the chosen worker", ["model"], registry=reg)
        self.input_tokens = Counter("dynamo_component_router_input_tokens", "Prompt tokens routed", ["model"],
                                    registry=reg)
        # Router accuracy SLI: per request whose engine reports its cached prompt tokens, what the router
        # predicted (its overlap) against what the engine found. Drift (lost events, evictions the
        # router did not hear about) shows as the two counters diverging and the error histogram
        # leaving its 0 bucket.
        self.accuracy_predicted = Counter("dynamo_component_router_accuracy_predicted_cached_tokens",
                                          "Cached prompt tokens the router predicted, for requests whose engine "
                                          "reported its own count", ["model"], registry=reg)
        self.accuracy_reported = Counter("dynamo_component_router_accuracy_reported_cached_tokens",
                                         "Cached prompt tokens the engines reported for the same requests",
                                         ["model"], registry=reg)
        self.accuracy_outcomes = Counter("dynamo_component_router_accuracy_requests",
                                         "Requests by prediction outcome (exact, over, under)", ["model", "outcome"],
                                         registry=reg)
        self.accuracy_error = Histogram("dynamo_component_router_accuracy_error_tokens",
                                        "Predicted minus engine-reported cached prompt tokens per request",
                                        ["model"], buckets=_ERROR_BUCKETS, registry=reg)
        self.events_applied = Counter("dynamo_component_kv_cache_events_applied", "KV events by outcome",
                                      ["event_type", "status"], registry=reg)
        self.event_gaps = Counter("dynamo_component_kv_cache_event_gaps", "Missed KV events detected",
                                  registry=reg)
        self.recoveries = Counter("dynamo_component_kv_index_recoveries",
                                  "Worker indexes rebuilt from the worker's snapshot", ["reason"], registry=reg)
        self.hashing_ms = Histogram("dynamo_router_overhead_block_hashing_ms", "Block hashing time",
                                    buckets=_MS_BUCKETS, registry=reg)
        self.find_matches_ms = Histogram("dynamo_router_overhead_indexer_find_matches_ms", "find_matches time",
                                         buckets=_MS_BUCKETS, registry=reg)
        self.scheduling_ms = Histogram("dynamo_router_overhead_scheduling_ms", "Cost and selection time",
                                       buckets=_MS_BUCKETS, registry=reg)
        self.total_ms = Histogram("dynamo_router_overhead_total_ms", "Total routing decision time",
                                  buckets=_MS_BUCKETS, registry=reg)
        self.active_blocks = Gauge("dynamo_component_router_active_decode_blocks", "Active decode blocks",
                                   ["worker_id", "dp_rank"], registry=reg)
        self.active_prefill = Gauge("dynamo_component_router_active_prefill_tokens", "Active prefill tokens",
                                    ["worker_id", "dp_rank"], registry=reg)
        self.queue_pending = Gauge("dynamo_frontend_router_queue_pending_requests",
                                   "Requests parked because every worker is saturated", registry=reg)
        self.queue_rejections = Counter("dynamo_frontend_router_queue_rejections",
                                        "Requests refused by the router queue (full, or waited too long)",
                                        ["reason"], registry=reg)
