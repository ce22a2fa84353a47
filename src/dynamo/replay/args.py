"""Flags of ``python -m dynamo.replay`` (reference §3.8): workload, fleet, router, engine, report.

Engine flags are the mocker's (same names and defaults, ``--extra-engine-args`` JSON on top); router
flags are the KV router's shared group. Every flag also reads a ``DYN_REPLAY_*`` / router / mocker
environment variable (CLI > env > default).
"""

from __future__ import annotations

import argparse
from typing import Any

from dynamo.common.configuration import (
    ConfigBase,
    add_argument,
    add_negatable_bool_argument,
)
from dynamo.common.configuration.arg_group import ArgGroup
from dynamo.common.configuration.groups.kv_router_args import KvRouterArgGroup, kv_router_config
from dynamo.common.configuration.utils import ArgumentContainer, nullable_int
from dynamo.kv_router.config import KvRouterConfig
from dynamo.mocker.args import MockEngineArgs
from dynamo.planner.args import DECISION_FIELDS, PlannerConfig, PlannerDecisionArgGroup
from dynamo.replay.routing import ROUTER_MODE_ALIASES
from dynamo.runtime.errors import ConfigError


class ReplayArgGroup(ArgGroup):
    def add_arguments(self, parser: ArgumentContainer) -> None:
        w = parser.add_argument_group("workload")  # type: ignore[attr-defined]
        w.add_argument("trace", nargs="*", default=[], help="Mooncake-format JSONL trace file(s); "
                       "omit for a synthetic workload (--input-tokens/--output-tokens/--request-count).")
        add_argument(w, "--trace-block-size", "DYN_REPLAY_TRACE_BLOCK_SIZE", 512,
                     "Prompt tokens per trace hash id (public Mooncake traces: 512).", arg_type=int)
        add_argument(w, "--arrival-speedup-ratio", "DYN_REPLAY_ARRIVAL_SPEEDUP_RATIO", 1.0,
                     "Divide trace arrival times by this.", arg_type=float)
        add_argument(w, "--replay-concurrency", "DYN_REPLAY_CONCURRENCY", None,
                     "Closed loop: keep this many requests in flight, ignoring timestamps.", arg_type=nullable_int)
        add_argument(w, "--input-tokens", "DYN_REPLAY_INPUT_TOKENS", None, "Synthetic prompt length.",
                     arg_type=int)
        add_argument(w, "--output-tokens", "DYN_REPLAY_OUTPUT_TOKENS", None, "Synthetic output length.",
                     arg_type=int)
        add_argument(w, "--request-count", "DYN_REPLAY_REQUEST_COUNT", None, "Synthetic request count.",
                     arg_type=int)
        add_argument(w, "--request-rate", "DYN_REPLAY_REQUEST_RATE", None,
                     "Synthetic Poisson arrivals per second (default: all at once).", arg_type=float)
        add_argument(w, "--arrival-interval-ms", "DYN_REPLAY_ARRIVAL_INTERVAL_MS", None,
                     "Synthetic fixed gap between arrivals.", arg_type=float)
        add_argument(w, "--shared-prefix-ratio", "DYN_REPLAY_SHARED_PREFIX_RATIO", 0.0,
                     "Synthetic: fraction of each prompt shared within its prefix group.", arg_type=float)
        add_argument(w, "--num-prefix-groups", "DYN_REPLAY_NUM_PREFIX_GROUPS", 0,
                     "Synthetic: number of shared-prefix groups.", arg_type=int)
        f = parser.add_argument_group("fleet")  # type: ignore[attr-defined]
        add_argument(f, "--num-workers", "DYN_REPLAY_NUM_WORKERS", 1, "Simulated mocker workers.", arg_type=int)
        add_argument(f, "--router-mode", "DYN_REPLAY_ROUTER_MODE", "round_robin", "How requests are routed.",
                     choices=sorted(ROUTER_MODE_ALIASES))
        add_argument(f, "--seed", "DYN_REPLAY_SEED", 0, "Seed of token ids, tie-breaks and arrivals.",
                     arg_type=int)
        e = parser.add_argument_group("engine (as python -m dynamo.mocker)")  # type: ignore[attr-defined]
        add_argument(e, "--num-gpu-blocks-override", "DYN_MOCKER_NUM_GPU_BLOCKS", 16384, "KV blocks per worker.",
                     arg_type=int)
        add_argument(e, "--block-size", "DYN_MOCKER_BLOCK_SIZE", 64, "Tokens per KV block.", arg_type=int)
        add_argument(e, "--max-num-seqs", "DYN_MOCKER_MAX_NUM_SEQS", 256, "Max running sequences.", arg_type=int)
        add_argument(e, "--max-num-batched-tokens", "DYN_MOCKER_MAX_NUM_BATCHED_TOKENS", 8192,
                     "Token budget per pass.", arg_type=int)
        add_negatable_bool_argument(e, "--enable-prefix-caching", "DYN_MOCKER_ENABLE_PREFIX_CACHING", True,
                                    "Reuse cached KV blocks across requests.")
        add_negatable_bool_argument(e, "--enable-chunked-prefill", "DYN_MOCKER_ENABLE_CHUNKED_PREFILL", True,
                                    "Split long prompts across passes.")
        add_argument(e, "--preemption-mode", "DYN_MOCKER_PREEMPTION_MODE", "lifo", "Preemption victim.",
                     choices=["lifo", "fifo"])
        add_argument(e, "--speedup-ratio", "DYN_MOCKER_SPEEDUP_RATIO", 1.0, "Engine speedup.", arg_type=float)
        add_argument(e, "--decode-speedup-ratio", "DYN_MOCKER_DECODE_SPEEDUP_RATIO", 1.0, "Decode speedup.",
                     arg_type=float)
        add_argument(e, "--planner-profile-data", "DYN_MOCKER_PROFILE_DATA", None,
                     "Profiling NPZ file/dir for interpolated timing (default: polynomial model).")
        add_argument(e, "--extra-engine-args", "DYN_MOCKER_EXTRA_ENGINE_ARGS", None,
                     "JSON file whose keys override the engine flags.")
        KvRouterArgGroup(block_size_flag="--router-block-size").add_arguments(parser)
        _add_planner_arguments(parser)
        o = parser.add_argument_group("output")  # type: ignore[attr-defined]
        add_argument(o, "--report-json", "DYN_REPLAY_REPORT_JSON", None,
                     "Write the summary (and per-request records) here as JSON.")
        add_negatable_bool_argument(o, "--progress", "DYN_REPLAY_PROGRESS", True,
                                    "Show a progress bar on stderr.")


def _add_planner_arguments(parser: ArgumentContainer) -> None:
    """The replay's own two planner flags, then ``python -m dynamo.planner``'s decision flags (the same
    group: names, env vars, defaults); what only a live planner needs (connectors, observation) is left
    out, and its chunk size is the engine's ``--max-num-batched-tokens``. ``--ttft``/``--itl`` are also
    the report's SLA."""
    g = parser.add_argument_group("planner in simulated time (as python -m dynamo.planner)")  # type: ignore[attr-defined]
    add_negatable_bool_argument(g, "--planner", "DYN_REPLAY_PLANNER", False,
                                "Run the planner on the simulated clock: it starts and drains workers "
                                "(--num-workers is the starting fleet).")
    add_argument(g, "--worker-startup-delay", "DYN_REPLAY_WORKER_STARTUP_DELAY", 2.0,
                 "Simulated seconds from a scale-up decision to the new worker taking requests.", arg_type=float)
    PlannerDecisionArgGroup(g).add_arguments(parser)


class ReplayConfig(ConfigBase):
    trace: list[str] = []
    trace_block_size: int = 512
    arrival_speedup_ratio: float = 1.0
    replay_concurrency: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_count: int | None = None
    request_rate: float | None = None
    arrival_interval_ms: float | None = None
    shared_prefix_ratio: float = 0.0
    num_prefix_groups: int = 0
    num_workers: int = 1
    router_mode: str = "round_robin"
    seed: int = 0
    num_gpu_blocks_override: int = 16384
    block_size: int = 64
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    preemption_mode: str = "lifo"
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    planner_profile_data: str | None = None
    extra_engine_args: str | None = None
    report_json: str | None = None
    progress: bool = True
    planner: bool = False
    worker_startup_delay: float = 2.0
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

    @property
    def synthetic(self) -> bool:
        return not self.trace

    def validate(self) -> None:
        if self.trace and any(v is not None for v in (self.input_tokens, self.output_tokens, self.request_count)):
            raise ConfigError("give either trace files or --input-tokens/--output-tokens/--request-count, not both")
        if not self.trace and None in (self.input_tokens, self.output_tokens, self.request_count):
            raise ConfigError("a synthetic replay needs --input-tokens, --output-tokens and --request-count "
                              "(or give a trace file)")
        if self.num_workers < 1:
            raise ConfigError("--num-workers must be >= 1")
        if self.trace_block_size < 1:
            raise ConfigError("--trace-block-size must be >= 1")
        if not self.arrival_speedup_ratio > 0:
            raise ConfigError("--arrival-speedup-ratio must be > 0")
        if self.replay_concurrency is not None and self.replay_concurrency < 1:
            raise ConfigError("--replay-concurrency must be >= 1")
        if not (self.ttft > 0 and self.itl > 0):
            raise ConfigError("--ttft and --itl must be > 0")
        if self.planner:
            if self.worker_startup_delay < 0:
                raise ConfigError("--worker-startup-delay must be >= 0")
            if self.min_endpoint < 1:
                raise ConfigError("a replay's planner needs --min-endpoint >= 1 (requests need a worker)")
            self.planner_config().validate()

    def planner_config(self) -> PlannerConfig:
        """The planner's own config: agg mode over the replay's workers, advisory never (it acts on the
        simulated fleet), its prefill chunk the engine's."""
        values = {k: getattr(self, k) for k in DECISION_FIELDS}
        # environment: no connector of its own is built (the replay is the connector); only validation
        # reads it. Unset fields take the planner's class defaults.
        return PlannerConfig.from_cli_args(argparse.Namespace(
            **values, environment="virtual", mode="agg", backend="mocker",
            max_num_batched_tokens=self.max_num_batched_tokens))

    def engine_args(self) -> MockEngineArgs:
        base = {
            "num_gpu_blocks": self.num_gpu_blocks_override, "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs, "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_prefix_caching": self.enable_prefix_caching, "enable_chunked_prefill": self.enable_chunked_prefill,
            "preemption_mode": self.preemption_mode, "speedup_ratio": self.speedup_ratio,
            "decode_speedup_ratio": self.decode_speedup_ratio, "planner_profile_data": self.planner_profile_data,
        }
        args = MockEngineArgs.from_dict(base)
        if self.extra_engine_args:
            args = MockEngineArgs.from_json(self.extra_engine_args, base=args)
        args.validate()
        return args

    def router_config(self) -> KvRouterConfig:
        return kv_router_config(argparse.Namespace(**vars(self)))


def build_parser() -> argparse.ArgumentParser:
    from dynamo.replay import __main__ as entry

    p = argparse.ArgumentParser(prog="python -m dynamo.replay", description=entry.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ReplayArgGroup().add_arguments(p)
    return p


def parse_config(argv: list[str] | None = None) -> ReplayConfig:
    ns: Any = build_parser().parse_args(argv)
    config = ReplayConfig.from_cli_args(ns)
    config.validate()
    return config
