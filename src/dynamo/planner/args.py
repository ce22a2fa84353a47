"""Planner flags (reference §7): CLI > environment > default, checked together in :meth:`PlannerConfig.validate`."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from dynamo.common.configuration import (
    ArgGroup,
    add_argument,
    add_negatable_bool_argument,
    env_or_default,
    parse_bool,
)
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.common.configuration.utils import ArgumentContainer
from dynamo.planner.predictors import PREDICTORS
from dynamo.runtime.errors import ConfigError

ENVIRONMENTS = ("kubernetes", "virtual", "global-planner", "local")
BACKENDS = ("vllm", "sglang", "trtllm", "mocker")
MODES = ("disagg", "prefill", "decode", "agg")
METRICS_SOURCES = ("prometheus", "frontend")


class PlannerConfig(RuntimeConfig):
    environment: str = "kubernetes"
    backend: str = "vllm"
    mode: str = "disagg"
    no_operation: bool = False
    adjustment_interval: float = 180.0
    ttft: float = 500.0
    itl: float = 50.0
    isl: float = 3000.0
    osl: float = 150.0
    load_predictor: str = "arima"
    load_predictor_warmup_trace: str | None = None
    prophet_window_size: int = 50
    kalman_q_level: float = 1.0
    kalman_q_trend: float = 0.1
    kalman_r: float = 10.0
    kalman_min_points: int = 5
    max_gpu_budget: int = 8
    min_endpoint: int = 1
    prefill_engine_num_gpu: int = 1
    decode_engine_num_gpu: int = 1
    no_correction: bool = False
    profile_results_dir: str | None = None
    enable_throughput_scaling: bool = True
    enable_loadbased_scaling: bool = False
    loadbased_adjustment_interval: float = 5.0
    loadbased_sensitivity: float = 80.0
    loadbased_max_step_up: int = 1
    loadbased_scale_down_window: float = 0.0
    max_num_fpm_samples: int = 64
    fpm_sample_bucket_size: int = 16
    load_min_observations: int = 5
    max_num_batched_tokens: int = 8192
    metrics_source: str = "prometheus"
    prometheus_endpoint: str = "http://localhost:9090"
    frontend_metrics_url: str = "http://localhost:8000/metrics"
    metrics_prefix: str = "dynamo_frontend"
    model_name: str | None = None
    prefill_component: str = "prefill"
    decode_component: str = "backend"
    local_worker_cmd: str | None = None
    local_prefill_worker_cmd: str | None = None
    local_drain_timeout: float = 30.0
    scaling_max_wait_time: float = 1800.0
    metrics_port: int = 0
    verbose: int = 0

    @property
    def ttft_s(self) -> float:
        return self.ttft / 1000.0

    @property
    def itl_s(self) -> float:
        return self.itl / 1000.0

    def pools(self) -> tuple[str, ...]:
        """Sub-components this planner scales: ``prefill`` and/or ``decode`` (agg workers count as decode)."""
        return {"disagg": ("prefill", "decode"), "prefill": ("prefill",), "decode": ("decode",),
                "agg": ("decode",)}[self.mode]

    def validate(self) -> None:
        super().validate()
        if self.environment == "global-planner":
            raise ConfigError("--environment global-planner is not available yet; use kubernetes, virtual or local")
        for flag, value in (("--adjustment-interval", self.adjustment_interval), ("--ttft", self.ttft),
                            ("--itl", self.itl), ("--isl", self.isl), ("--osl", self.osl),
                            ("--loadbased-adjustment-interval", self.loadbased_adjustment_interval)):
            if not value > 0:
                raise ConfigError(f"{flag} must be > 0 (got {value})")
        if self.min_endpoint < 0:
            raise ConfigError("--min-endpoint must be >= 0")
        if self.prefill_engine_num_gpu < 1 or self.decode_engine_num_gpu < 1:
            raise ConfigError("--prefill-engine-num-gpu and --decode-engine-num-gpu must be >= 1")
        floor = sum(self.min_endpoint * (self.prefill_engine_num_gpu if p == "prefill" else self.decode_engine_num_gpu)
                    for p in self.pools())
        if 0 < self.max_gpu_budget < floor:
            raise ConfigError(f"--max-gpu-budget {self.max_gpu_budget} is below the {floor} GPUs that "
                              f"--min-endpoint {self.min_endpoint} needs in --mode {self.mode}")
        if not 0 < self.loadbased_sensitivity <= 100:
            raise ConfigError("--loadbased-sensitivity must be in (0, 100]")
        if self.loadbased_max_step_up < 1:
            raise ConfigError(f"--loadbased-max-step-up must be >= 1 (got {self.loadbased_max_step_up})")
        if self.loadbased_scale_down_window < 0:
            raise ConfigError(f"--loadbased-scale-down-window must be >= 0 (got {self.loadbased_scale_down_window})")
        if not (self.enable_throughput_scaling or self.enable_loadbased_scaling):
            raise ConfigError("nothing to do: --no-enable-throughput-scaling needs --enable-loadbased-scaling")
        if self.enable_throughput_scaling and not self.profile_results_dir:
            raise ConfigError("throughput scaling needs --profile-results-dir (profiling NPZs); or use "
                              "--no-enable-throughput-scaling --enable-loadbased-scaling")
        if self.environment == "local":
            if not self.local_worker_cmd and "decode" in self.pools():
                raise ConfigError("--environment local needs --local-worker-cmd (the worker command line)")
            if "prefill" in self.pools() and not self.local_prefill_worker_cmd:
                raise ConfigError(f"--environment local --mode {self.mode} needs --local-prefill-worker-cmd")
            for flag, cmd in (("--local-worker-cmd", self.local_worker_cmd),
                              ("--local-prefill-worker-cmd", self.local_prefill_worker_cmd)):
                if cmd:
                    try:
                        shlex.split(cmd)
                    except ValueError as exc:
                        raise ConfigError(f"{flag}: {exc}") from exc


class PlannerDecisionArgGroup(ArgGroup):
    """The flags of the planner's decisions (targets, predictors, budget, load-based pacing), which a
    simulated planner (``python -m dynamo.replay --planner``) shares with the live one. The engines' chunk
    size is left out: a replay takes it from its engine flags."""

    def __init__(self, group: Any = None) -> None:
        self.group = group  # where the target/predictor flags go (default: a new "planner" group)
        self.load_group: Any = None

    def add_arguments(self, parser: ArgumentContainer) -> None:
        d = PlannerConfig
        g = self.group if self.group is not None else parser.add_argument_group("planner")
        add_argument(g, "--adjustment-interval", "DYN_PLANNER_ADJUSTMENT_INTERVAL", d.adjustment_interval,
                     "Seconds between throughput-based decisions.", arg_type=float)
        add_argument(g, "--ttft", "DYN_PLANNER_TTFT", d.ttft, "TTFT target (ms).", arg_type=float)
        add_argument(g, "--itl", "DYN_PLANNER_ITL", d.itl, "ITL target (ms).", arg_type=float)
        add_argument(g, "--isl", "DYN_PLANNER_ISL", d.isl, "Assumed ISL before any traffic is observed.",
                     arg_type=float)
        add_argument(g, "--osl", "DYN_PLANNER_OSL", d.osl, "Assumed OSL before any traffic is observed.",
                     arg_type=float)
        add_argument(g, "--load-predictor", "DYN_PLANNER_LOAD_PREDICTOR", d.load_predictor,
                     "Forecast of next interval's load (arima needs pmdarima, prophet needs prophet).",
                     choices=PREDICTORS)
        add_argument(g, "--load-predictor-warmup-trace", "DYN_PLANNER_WARMUP_TRACE", None,
                     "Trace (CSV with TIMESTAMP,ContextTokens,GeneratedTokens or mooncake JSONL) to warm "
                     "the predictors with, bucketed by --adjustment-interval.")
        add_argument(g, "--prophet-window-size", "DYN_PLANNER_PROPHET_WINDOW", d.prophet_window_size,
                     "Points Prophet fits on.", arg_type=int)
        add_argument(g, "--kalman-q-level", "DYN_PLANNER_KALMAN_Q_LEVEL", d.kalman_q_level,
                     "Kalman process noise of the level.", arg_type=float)
        add_argument(g, "--kalman-q-trend", "DYN_PLANNER_KALMAN_Q_TREND", d.kalman_q_trend,
                     "Kalman process noise of the trend.", arg_type=float)
        add_argument(g, "--kalman-r", "DYN_PLANNER_KALMAN_R", d.kalman_r, "Kalman measurement noise.",
                     arg_type=float)
        add_argument(g, "--kalman-min-points", "DYN_PLANNER_KALMAN_MIN_POINTS", d.kalman_min_points,
                     "Observations before the Kalman forecast is used (last value until then).", arg_type=int)
        add_argument(g, "--max-gpu-budget", "DYN_PLANNER_MAX_GPU_BUDGET", d.max_gpu_budget,
                     "Most GPUs all scaled pools may use together (0: no limit).", arg_type=int)
        add_argument(g, "--min-endpoint", "DYN_PLANNER_MIN_ENDPOINT", d.min_endpoint,
                     "Fewest replicas per pool.", arg_type=int)
        add_argument(g, "--prefill-engine-num-gpu", "DYN_PLANNER_PREFILL_ENGINE_NUM_GPU", d.prefill_engine_num_gpu,
                     "GPUs per prefill engine.", arg_type=int)
        add_argument(g, "--decode-engine-num-gpu", "DYN_PLANNER_DECODE_ENGINE_NUM_GPU", d.decode_engine_num_gpu,
                     "GPUs per decode (or agg) engine.", arg_type=int)
        _add_flag(g, "--no-correction", "DYN_PLANNER_NO_CORRECTION",
                  "Do not correct the profiles with the observed TTFT/ITL.")
        add_argument(g, "--profile-results-dir", "DYN_PLANNER_PROFILE_RESULTS_DIR", None,
                     "Profiling results: selected_{prefill,decode}_interpolation/raw_data.npz or "
                     "prefill.npz + decode.npz.")
        add_negatable_bool_argument(g, "--enable-throughput-scaling", "DYN_PLANNER_ENABLE_THROUGHPUT_SCALING",
                                    d.enable_throughput_scaling, "Scale on predicted load (SLA planner).")
        lb = self.load_group = parser.add_argument_group("load-based scaling")
        add_negatable_bool_argument(lb, "--enable-loadbased-scaling", "DYN_PLANNER_ENABLE_LOADBASED_SCALING",
                                    d.enable_loadbased_scaling,
                                    "Also scale ±1 on engines' forward-pass metrics (event plane).")
        add_argument(lb, "--loadbased-adjustment-interval", "DYN_PLANNER_LOADBASED_INTERVAL",
                     d.loadbased_adjustment_interval, "Seconds between load-based decisions.", arg_type=float)
        add_argument(lb, "--loadbased-sensitivity", "DYN_PLANNER_LOADBASED_SENSITIVITY", d.loadbased_sensitivity,
                     "Scale down when every engine is under this % of both targets.", arg_type=float)
        add_argument(lb, "--loadbased-max-step-up", "DYN_PLANNER_LOADBASED_MAX_STEP_UP", d.loadbased_max_step_up,
                     "Most replicas one load-based decision adds, sized by how far the estimates exceed the "
                     "targets (1: the reference's one per interval).", arg_type=int)
        add_argument(lb, "--loadbased-scale-down-window", "DYN_PLANNER_LOADBASED_SCALE_DOWN_WINDOW",
                     d.loadbased_scale_down_window, "Scale-down cooldown: remove a replica only after every load-based "
                     "step of the last this many seconds voted down (0: at once, as the reference).",
                     arg_type=float)
        add_argument(lb, "--max-num-fpm-samples", "DYN_PLANNER_MAX_NUM_FPM_SAMPLES", d.max_num_fpm_samples,
                     "Regression points kept per engine.", arg_type=int)
        add_argument(lb, "--fpm-sample-bucket-size", "DYN_PLANNER_FPM_SAMPLE_BUCKET_SIZE", d.fpm_sample_bucket_size,
                     "Width (tokens / KV blocks) of the buckets that dedupe regression points.", arg_type=int)
        add_argument(lb, "--load-min-observations", "DYN_PLANNER_LOAD_MIN_OBSERVATIONS", d.load_min_observations,
                     "Points before an engine's estimate counts.", arg_type=int)


#: destinations of :class:`PlannerDecisionArgGroup`'s flags
DECISION_FIELDS = ("adjustment_interval", "ttft", "itl", "isl", "osl", "load_predictor",
                   "load_predictor_warmup_trace", "prophet_window_size", "kalman_q_level", "kalman_q_trend",
                   "kalman_r", "kalman_min_points", "max_gpu_budget", "min_endpoint", "prefill_engine_num_gpu",
                   "decode_engine_num_gpu", "no_correction", "profile_results_dir", "enable_throughput_scaling",
                   "enable_loadbased_scaling", "loadbased_adjustment_interval", "loadbased_sensitivity",
                   "loadbased_max_step_up", "loadbased_scale_down_window", "max_num_fpm_samples",
                   "fpm_sample_bucket_size", "load_min_observations")


class PlannerArgGroup(ArgGroup):
    """Every flag of ``python -m dynamo.planner``: where it acts, what it decides, what it observes."""

    def add_arguments(self, parser: ArgumentContainer) -> None:
        d = PlannerConfig
        g = parser.add_argument_group("planner")
        add_argument(g, "--environment", "DYN_PLANNER_ENVIRONMENT", d.environment,
                     "Where replicas are changed: kubernetes (DGD scaling adapters), virtual (decisions in the "
                     "discovery store for an external orchestrator) or local (worker processes on this host).",
                     choices=ENVIRONMENTS)
        add_argument(g, "--backend", "DYN_PLANNER_BACKEND", d.backend, "Engine of the scaled workers.",
                     choices=BACKENDS)
        add_argument(g, "--mode", "DYN_PLANNER_MODE", d.mode, "Pools to scale: disagg (prefill and decode), "
                     "prefill, decode or agg (one pool doing both).", choices=MODES)
        _add_flag(g, "--no-operation", "DYN_PLANNER_NO_OPERATION",
                  "Advisory mode: compute and report decisions, change nothing.")
        decision = PlannerDecisionArgGroup(g)
        decision.add_arguments(parser)
        lb = decision.load_group
        add_argument(lb, "--max-num-batched-tokens", "DYN_PLANNER_MAX_NUM_BATCHED_TOKENS", d.max_num_batched_tokens,
                     "Engines' prefill chunk size, for the TTFT estimate.", arg_type=int)
        m = parser.add_argument_group("observation")
        add_argument(m, "--metrics-source", "DYN_PLANNER_METRICS_SOURCE", d.metrics_source,
                     "prometheus (query PROMETHEUS_ENDPOINT) or frontend (scrape its /metrics directly).",
                     choices=METRICS_SOURCES)
        add_argument(m, "--prometheus-endpoint", "PROMETHEUS_ENDPOINT", d.prometheus_endpoint,
                     "Prometheus server base URL.")
        add_argument(m, "--frontend-metrics-url", "DYN_PLANNER_FRONTEND_METRICS_URL", d.frontend_metrics_url,
                     "Frontend /metrics URL for --metrics-source frontend.")
        add_argument(m, "--metrics-prefix", "DYN_METRICS_PREFIX", d.metrics_prefix, "Frontend metric name prefix.")
        add_argument(m, "--model-name", "DYN_PLANNER_MODEL_NAME", None, "Only count this model's traffic.")
        c = parser.add_argument_group("connectors")
        add_argument(c, "--prefill-component", "DYN_PLANNER_PREFILL_COMPONENT", d.prefill_component,
                     "Component (Kubernetes: service) of the prefill workers.")
        add_argument(c, "--decode-component", "DYN_PLANNER_DECODE_COMPONENT", d.decode_component,
                     "Component (Kubernetes: service) of the decode or agg workers.")
        add_argument(c, "--local-worker-cmd", "DYN_PLANNER_LOCAL_WORKER_CMD", None,
                     "--environment local: command line of one decode/agg worker (e.g. 'python -m dynamo.mocker "
                     "--model-path ...').")
        add_argument(c, "--local-prefill-worker-cmd", "DYN_PLANNER_LOCAL_PREFILL_WORKER_CMD", None,
                     "--environment local: command line of one prefill worker.")
        add_argument(c, "--local-drain-timeout", "DYN_PLANNER_LOCAL_DRAIN_TIMEOUT", d.local_drain_timeout,
                     "Seconds a stopped local worker may drain after SIGTERM before SIGKILL.", arg_type=float)
        add_argument(c, "--scaling-max-wait-time", "SCALING_MAX_WAIT_TIME", d.scaling_max_wait_time,
                     "Seconds to wait for a virtual-connector decision to be carried out.", arg_type=float)
        add_argument(parser, "--metrics-port", "PLANNER_PROMETHEUS_PORT", d.metrics_port,
                     "Serve the planner's own /metrics on this port (0: off).", arg_type=int)


def _add_flag(parser: ArgumentContainer, flag: str, env_var: str, help: str) -> None:
    """A plain on-switch. The reference spells these ``--no-...``, which argparse's negatable flags
    would read as the *off* form of ``--operation``/``--correction``."""
    default = env_or_default(env_var, False, parse_bool)
    parser.add_argument(flag, action="store_true", default=default,
                        help=f"{help} env var: {env_var} | default: false")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynamo.planner",
                                description="SLA- and load-driven autoscaling of prefill/decode worker pools.")
    RuntimeArgGroup().add_arguments(p)
    PlannerArgGroup().add_arguments(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return p


def parse_config(argv: list[str] | None = None) -> PlannerConfig:
    return PlannerConfig.from_cli_args(build_parser().parse_args(argv))
