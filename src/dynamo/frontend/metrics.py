"""Frontend Prometheus metrics, ``dynamo_frontend_*`` by default (reference §4.7)."""

from __future__ import annotations

import math
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dynamo.runtime import tasks


def log_buckets(lo: float, hi: float, count: int) -> list[float]:
    """``count`` log-spaced bucket bounds from ``lo`` to ``hi``, rounded to 2 significant figures."""
    if count < 2:
        return [hi]
    out: list[float] = []
    ratio = (hi / lo) ** (1 / (count - 1))
    for i in range(count):
        v = lo * ratio**i
        digits = 1 - math.floor(math.log10(abs(v)))
        v = round(v, digits)
        if not out or v > out[-1]:
            out.append(v)
    return out


def _buckets(name: str, lo: float, hi: float, count: int) -> list[float]:
    env = os.environ.get
    try:
        return log_buckets(float(env(f"DYN_METRICS_{name}_MIN", lo)), float(env(f"DYN_METRICS_{name}_MAX", hi)),
                           int(env(f"DYN_METRICS_{name}_COUNT", count)))
    except ValueError:
        return log_buckets(lo, hi, count)


class FrontendMetrics:
    def __init__(self, prefix: str | None = None) -> None:
        p = prefix or os.environ.get("DYN_METRICS_PREFIX") or "dynamo_frontend"
        self.prefix = p
        self.registry = reg = CollectorRegistry()
        reg.register(tasks.COLLECTOR)  # dynamo_background_task_restarts_total
        self._per_model: dict[str, ModelMetrics] = {}
        self._router_metrics: Any = None
        m = ["model"]
        self.requests = Counter(f"{p}_requests", "HTTP requests by outcome",
                                ["model", "endpoint", "request_type", "status", "error_type"], registry=reg)
        self.inflight = Gauge(f"{p}_inflight_requests", "Requests being served", m, registry=reg)
        self.queued = Gauge(f"{p}_queued_requests", "Requests waiting for their first token", m, registry=reg)
        self.disconnected = Counter(f"{p}_disconnected_clients", "Clients that went away mid-request",
                                    registry=reg)
        self.duration = Histogram(f"{p}_request_duration_seconds", "Request duration", m,
                                  buckets=_buckets("REQUEST_DURATION", 1, 512, 10), registry=reg)
        self.isl = Histogram(f"{p}_input_sequence_tokens", "Prompt tokens", m,
                             buckets=_buckets("INPUT_SEQUENCE", 50, 128000, 12), registry=reg)
        self.osl = Histogram(f"{p}_output_sequence_tokens", "Generated tokens", m,
                             buckets=_buckets("OUTPUT_SEQUENCE", 50, 32000, 10), registry=reg)
        self.output_tokens = Counter(f"{p}_output_tokens", "Generated tokens", m, registry=reg)
        worker = os.environ.get("DYN_FRONTEND_WORKER_INDEX")
        if worker is not None:
            # One of --num-workers processes sharing a port: each serves its own /metrics, so a scrape
            # says which process it reached.
            Gauge(f"{p}_worker_info", "This frontend process in its --num-workers group", ["worker", "pid"],
                  registry=reg).labels(worker, str(os.getpid())).set(1)
        self.cached_tokens = Histogram(f"{p}_cached_tokens", "Prompt tokens served from KV cache", m,
                                       buckets=_buckets("INPUT_SEQUENCE", 50, 128000, 12), registry=reg)
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds", "Time to first token", m,
                              buckets=_buckets("TTFT", 0.001, 480, 18), registry=reg)
        self.itl = Histogram(f"{p}_inter_token_latency_seconds", "Inter-token latency", m,
                             buckets=_buckets("ITL", 0.001, 2, 13), registry=reg)
        self.tokenizer_latency = Histogram(f"{p}_tokenizer_latency_ms", "Preprocessing time (ms)", m,
                                           buckets=log_buckets(0.01, 1000, 12), registry=reg)
        self.preprocess_offloaded = Counter(f"{p}_preprocess_offloaded",
                                            "Requests templated and tokenized on a helper thread", m, registry=reg)
        self.rejections = Counter(f"{p}_model_rejection", "Requests rejected because workers were busy",
                                  ["model", "endpoint"], registry=reg)
        self.cancellations = Counter(f"{p}_model_cancellation", "Requests cancelled by the client", m,
                                     registry=reg)
        self.migrations = Counter(f"{p}_model_migration", "Requests migrated to another worker",
                                  ["model", "migration_type"], registry=reg)
        self.migration_seq_len_exceeded = Counter(
            f"{p}_model_migration_max_seq_len_exceeded", "Migrations skipped: sequence too long", m, registry=reg)
        self.model_total_kv_blocks = Gauge(f"{p}_model_total_kv_blocks", "KV blocks per worker", m, registry=reg)
        self.model_max_num_seqs = Gauge(f"{p}_model_max_num_seqs", "Max sequences per worker", m, registry=reg)
        self.model_max_num_batched_tokens = Gauge(f"{p}_model_max_num_batched_tokens", "Token budget per pass",
                                                  m, registry=reg)
        self.model_context_length = Gauge(f"{p}_model_context_length", "Context length", m, registry=reg)
        self.model_kv_cache_block_size = Gauge(f"{p}_model_kv_cache_block_size", "KV block size", m, registry=reg)
        self.model_migration_limit = Gauge(f"{p}_model_migration_limit", "Migration limit", m, registry=reg)
        self.model_workers = Gauge(f"{p}_model_workers", "Workers serving the model", m, registry=reg)
        self.worker_active_decode_blocks = Gauge(f"{p}_worker_active_decode_blocks", "Active decode blocks",
                                                 ["worker_id", "dp_rank"], registry=reg)
        self.worker_active_prefill_tokens = Gauge(f"{p}_worker_active_prefill_tokens", "Active prefill tokens",
                                                  ["worker_id", "dp_rank"], registry=reg)
        self.disagg_prefills = Counter(
            f"{p}_disagg_prefills", "Prefills by where they ran: remote_bootstrap, remote_synchronous (on a "
            "prefill worker), local (conditional disaggregation), aggregated (no prefill worker)",
            ["model", "kind"], registry=reg)
        self.disagg_prefill_retries = Counter(f"{p}_disagg_prefill_retries",
                                              "Prefills retried on another prefill worker", ["model", "error"],
                                              registry=reg)
        self.disagg_prefill_seconds = Histogram(
            f"{p}_disagg_prefill_seconds", "Synchronous remote prefill: prefill plus KV handoff", m,
            buckets=_buckets("TTFT", 0.001, 480, 18), registry=reg)
        self.worker_kv_used_blocks = Gauge(f"{p}_worker_kv_used_blocks", "KV blocks used (worker report)",
                                           ["worker_id", "dp_rank"], registry=reg)

    def prefill_metrics(self, model: str) -> Any:
        """Callbacks of one model's prefill router onto ``{prefix}_disagg_*``."""
        from dynamo.llm.prefill_router import PrefillMetrics, PrefillOutcome

        def on_outcome(o: PrefillOutcome) -> None:
            kind = f"remote_{o.path}" if o.mode == "remote" else o.mode
            self.disagg_prefills.labels(model, kind).inc()
            if o.prefill_ms is not None:
                self.disagg_prefill_seconds.labels(model).observe(o.prefill_ms / 1000)

        return PrefillMetrics(on_outcome=on_outcome,
                              on_retry=lambda why: self.disagg_prefill_retries.labels(model, why).inc())

    def router_metrics(self) -> Any:
        """KV router metrics on this frontend's registry (one set shared by every model)."""
        if self._router_metrics is None:
            from dynamo.kv_router.metrics import RouterMetrics

            self._router_metrics = RouterMetrics(self.registry)
        return self._router_metrics

    def for_model(self, model: str) -> ModelMetrics:
        """Label children for one model, looked up once instead of on every token."""
        cached = self._per_model.get(model)
        if cached is None:
            cached = self._per_model[model] = ModelMetrics(self, model)
        return cached

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    __slots__ = ("cached_tokens", "cancellations", "duration", "inflight", "isl", "itl", "osl", "output_tokens",
                 "queued", "ttft")

    def __init__(self, m: FrontendMetrics, model: str) -> None:
        self.inflight = m.inflight.labels(model)
        self.queued = m.queued.labels(model)
        self.duration = m.duration.labels(model)
        self.isl = m.isl.labels(model)
        self.osl = m.osl.labels(model)
        self.output_tokens = m.output_tokens.labels(model)
        self.ttft = m.ttft.labels(model)
        self.itl = m.itl.labels(model)
        self.cancellations = m.cancellations.labels(model)
        self.cached_tokens = m.cached_tokens.labels(model)
