"""Frontend configuration (reference §4.5): HTTP, routing, migration and busy-detection flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dynamo.common.configuration import (
    ArgGroup,
    ArgumentContainer,
    add_argument,
    add_negatable_bool_argument,
    nullable_float,
    nullable_int,
)
from dynamo.common.configuration.groups import (
    KvRouterArgGroup,
    RuntimeArgGroup,
    RuntimeConfig,
    kv_router_config,
)
from dynamo.frontend.process_group import reuse_port_supported
from dynamo.llm.push_router import ROUTER_MODES
from dynamo.runtime.errors import ConfigError


class FrontendConfig(RuntimeConfig):
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    http_reuse_port: bool = False
    num_workers: int = 1
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    router_mode: str = "round-robin"
    metrics_prefix: str = "dynamo_frontend"
    migration_limit: int = 0
    migration_max_seq_len: int | None = None
    stream_stall_timeout: float | None = None
    active_decode_blocks_threshold: float | None = 1.0
    active_prefill_tokens_threshold: int | None = 10_000_000
    active_prefill_tokens_threshold_frac: float | None = 10.0
    interactive: bool = False
    model_filter_namespace: str | None = None
    kv_cache_block_size: int | None = None
    kv_router: Any = None
    admin_token: str | None = None
    enable_direct_routing_header: bool = False
    kserve_grpc_server: bool = False
    grpc_port: int = 8001
    grpc_metrics_port: int = 8788
    enforce_disagg: bool = False
    router_conditional_disagg: bool = False
    router_conditional_disagg_policy: str = "isl_bounding"
    router_conditional_disagg_eff_isl_threshold: int = 2048
    router_conditional_disagg_eff_isl_ratio_threshold: float = 0.7
    router_conditional_disagg_prefill_busy_threshold: float | None = None
    router_conditional_disagg_decode_busy_threshold: float | None = None
    router_conditional_disagg_config: str | None = None
    conditional_disagg: Any = None
    verbose: int = 0

    @property
    def direct_routing_allowed(self) -> bool:
        """Whether clients may pin a worker with ``x-worker-instance-id``."""
        return self.router_mode == "direct" or self.enable_direct_routing_header

    def validate(self) -> None:
        super().validate()
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("--tls-cert-path and --tls-key-path must be given together")
        for path in (self.tls_cert_path, self.tls_key_path):
            if path and not os.path.isfile(path):
                raise ConfigError(f"TLS file {path!r} does not exist")
        if not 0 <= self.migration_limit <= 1023:
            raise ConfigError(f"--migration-limit must be in [0, 1023], got {self.migration_limit}")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be in [0, 65535], got {self.http_port}")
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers must be at least 1, got {self.num_workers}")
        if (self.num_workers > 1 or self.http_reuse_port) and not reuse_port_supported():
            raise ConfigError(f"--num-workers > 1 and --http-reuse-port need SO_REUSEPORT balancing, which only "
                              f"Linux has ({sys.platform}): run one frontend per port behind a load balancer")
        if self.num_workers > 1 and self.kserve_grpc_server:
            raise ConfigError("--num-workers > 1 serves HTTP only; run the KServe gRPC frontend as its own "
                              "process (--kserve-grpc-server without --num-workers)")
        if self.stream_stall_timeout is not None and self.stream_stall_timeout <= 0:
            raise ConfigError("--stream-stall-timeout must be positive")
        if self.kserve_grpc_server:
            for flag, port in (("--grpc-port", self.grpc_port), ("--grpc-metrics-port", self.grpc_metrics_port)):
                if not 0 <= port <= 65535:
                    raise ConfigError(f"{flag} must be in [0, 65535], got {port}")
            from dynamo.frontend.grpc import require_kserve

            require_kserve()


class FrontendArgGroup(ArgGroup):
    def add_arguments(self, parser: ArgumentContainer) -> None:
        add_argument(parser, "--http-host", "DYN_HTTP_HOST", "0.0.0.0", "Address the HTTP server binds.")
        add_argument(parser, "--http-port", "DYN_HTTP_PORT", 8000, "HTTP port.", arg_type=int)
        add_argument(parser, "--num-workers", "DYN_FRONTEND_NUM_WORKERS", 1,
                     "Frontend processes sharing --http-port (SO_REUSEPORT, Linux): one core each for "
                     "templating and tokenizing; with --router-mode kv they keep one view of worker load "
                     "through router replica sync.", arg_type=int)
        add_negatable_bool_argument(parser, "--http-reuse-port", "DYN_HTTP_REUSE_PORT", False,
                                    "Bind --http-port with SO_REUSEPORT so other frontends (same user) can share "
                                    "it (Linux; --num-workers sets it for its processes).")
        add_argument(parser, "--tls-cert-path", "DYN_TLS_CERT_PATH", None, "TLS certificate (PEM); needs --tls-key-path.")
        add_argument(parser, "--tls-key-path", "DYN_TLS_KEY_PATH", None, "TLS private key (PEM); needs --tls-cert-path.")
        add_argument(parser, "--router-mode", "DYN_ROUTER_MODE", "round-robin",
                     "How requests are spread over a model's workers.", choices=list(ROUTER_MODES))
        add_argument(parser, "--metrics-prefix", "DYN_METRICS_PREFIX", "dynamo_frontend",
                     "Prefix of the frontend's Prometheus metrics.")
        add_argument(parser, "--migration-limit", "DYN_MIGRATION_LIMIT", 0,
                     "Times a request may move to another worker when its worker is lost (0-1023; 0 = off).",
                     arg_type=int)
        add_argument(parser, "--migration-max-seq-len", "DYN_MIGRATION_MAX_SEQ_LEN", None,
                     "Do not migrate requests whose prompt plus output exceeds this many tokens.",
                     arg_type=nullable_int)
        add_argument(parser, "--stream-stall-timeout", "DYN_STREAM_STALL_TIMEOUT", None,
                     "Seconds without output after which a worker stream counts as lost (off by default).",
                     arg_type=nullable_float)
        add_argument(parser, "--active-decode-blocks-threshold", "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD", 1.0,
                     "Worker busy when its KV usage exceeds this fraction of its blocks ('None' disables).",
                     arg_type=nullable_float)
        add_argument(parser, "--active-prefill-tokens-threshold", "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD",
                     10_000_000, "Worker busy above this many queued prefill tokens ('None' disables).",
                     arg_type=nullable_int)
        add_argument(parser, "--active-prefill-tokens-threshold-frac", "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD_FRAC",
                     10.0, "Worker busy above this multiple of max_num_batched_tokens ('None' disables).",
                     arg_type=nullable_float)
        # Operator controls stay off the public API unless asked for: any client could otherwise mark
        # the fleet busy (POST /busy_threshold) or pin a worker past busy detection.
        add_argument(parser, "--admin-token", "DYN_ADMIN_TOKEN", None,
                     "Enables POST /busy_threshold for requests carrying 'Authorization: Bearer <token>' "
                     "(prefer the env var: a flag is visible in the process list).")
        add_negatable_bool_argument(parser, "--enable-direct-routing-header", "DYN_ENABLE_DIRECT_ROUTING_HEADER",
                                    False, "Honour the x-worker-instance-id header outside --router-mode direct "
                                    "(otherwise such requests get 403).")
        # KServe v2 gRPC beside the HTTP API (the reference replaces HTTP with it; we keep both, so the
        # gRPC server gets its own port, Triton's default gRPC port next to our HTTP 8000).
        add_negatable_bool_argument(parser, "--kserve-grpc-server", "DYN_KSERVE_GRPC_SERVER", False,
                                    "Also serve the KServe v2 gRPC inference protocol (Triton clients); "
                                    "needs the 'grpc' extra.")
        add_argument(parser, "--grpc-port", "DYN_GRPC_PORT", 8001,
                     "Port of the KServe gRPC server (with --kserve-grpc-server; host is --http-host).",
                     arg_type=int)
        add_argument(parser, "--grpc-metrics-port", "DYN_GRPC_METRICS_PORT", 8788,
                     "Port serving GET /metrics beside the gRPC server (with --kserve-grpc-server; 0 = off).",
                     arg_type=int)
        d = parser.add_argument_group("disaggregated prefill/decode") if hasattr(parser, "add_argument_group") \
            else parser
        add_negatable_bool_argument(d, "--enforce-disagg", "DYN_ENFORCE_DISAGG", False,
                                    "Never serve a model aggregated: with no prefill worker registered, requests "
                                    "get 503 instead of running prefill on the decode workers.")
        add_negatable_bool_argument(d, "--router-conditional-disagg", "DYN_ROUTER_CONDITIONAL_DISAGG", False,
                                    "Prefill on the decode worker when a remote prefill would not pay (see the "
                                    "policy flags).")
        add_argument(d, "--router-conditional-disagg-policy", "DYN_ROUTER_CONDITIONAL_DISAGG_POLICY",
                     "isl_bounding", "isl_bounding: local when little of the prompt is uncached on the decode "
                     "worker; prefill_load: local when the prefill worker is busy; isl_or_load: either.",
                     choices=["isl_bounding", "prefill_load", "isl_or_load"])
        add_argument(d, "--router-conditional-disagg-eff-isl-threshold",
                     "DYN_ROUTER_CONDITIONAL_DISAGG_EFF_ISL_THRESHOLD", 2048,
                     "isl_bounding: local prefill needs fewer uncached prompt tokens than this ...", arg_type=int)
        add_argument(d, "--router-conditional-disagg-eff-isl-ratio-threshold",
                     "DYN_ROUTER_CONDITIONAL_DISAGG_EFF_ISL_RATIO_THRESHOLD", 0.7,
                     "... and a smaller uncached fraction of the prompt than this.", arg_type=float)
        add_argument(d, "--router-conditional-disagg-prefill-busy-threshold",
                     "DYN_ROUTER_CONDITIONAL_DISAGG_PREFILL_BUSY_THRESHOLD", None,
                     "prefill_load: a prefill worker is busy above this x max_num_batched_tokens of active "
                     "prefill tokens (default: --router-queue-threshold).", arg_type=nullable_float)
        add_argument(d, "--router-conditional-disagg-decode-busy-threshold",
                     "DYN_ROUTER_CONDITIONAL_DISAGG_DECODE_BUSY_THRESHOLD", None,
                     "Decode guard: no local prefill when the decode worker would hold more than this x its KV "
                     "blocks (default: off).", arg_type=nullable_float)
        add_argument(d, "--router-conditional-disagg-config", "DYN_ROUTER_CONDITIONAL_DISAGG_CONFIG", None,
                     "The policy settings as one JSON object (keys policy, eff_isl_threshold, "
                     "eff_isl_ratio_threshold, prefill_busy_threshold, decode_busy_threshold); overrides the "
                     "separate flags.")
        parser.add_argument("-i", "--interactive", action="store_true",
                            help="Chat with the first model in the terminal instead of serving HTTP.")
        parser.add_argument("-v", "--verbose", action="count", default=0,
                            help="-v debug, -vv trace (also DYN_LOG).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dynamo.frontend",
        description="OpenAI-compatible HTTP frontend: discovers models registered by workers and routes to them.",
    )
    RuntimeArgGroup().add_arguments(parser)
    FrontendArgGroup().add_arguments(parser)
    KvRouterArgGroup().add_arguments(parser)
    return parser


def conditional_disagg_config(config: FrontendConfig) -> Any:
    from dynamo.kv_router.conditional_disagg import ConditionalDisaggConfig

    busy = config.router_conditional_disagg_prefill_busy_threshold
    if busy is None and config.kv_router is not None:
        busy = config.kv_router.router_queue_threshold
    settings: dict[str, Any] = {
        "policy": config.router_conditional_disagg_policy,
        "eff_isl_threshold": config.router_conditional_disagg_eff_isl_threshold,
        "eff_isl_ratio_threshold": config.router_conditional_disagg_eff_isl_ratio_threshold,
        "prefill_busy_threshold": busy,
        "decode_busy_threshold": config.router_conditional_disagg_decode_busy_threshold,
    }
    if config.router_conditional_disagg_config:
        try:
            given = json.loads(config.router_conditional_disagg_config)
        except ValueError as exc:
            raise ConfigError(f"--router-conditional-disagg-config is not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ConfigError("--router-conditional-disagg-config must be a JSON object")
        unknown = sorted(set(given) - set(settings))
        if unknown:
            raise ConfigError(f"--router-conditional-disagg-config has unknown keys {unknown}; valid: "
                              f"{', '.join(settings)}")
        for key, value in given.items():
            numeric = key != "policy"
            if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"--router-conditional-disagg-config: {key} must be a number")
            if not numeric and not isinstance(value, str):
                raise ConfigError("--router-conditional-disagg-config: policy must be a string")
        settings.update(given)
    return ConditionalDisaggConfig(enabled=config.router_conditional_disagg, **settings).validate()


def parse_config(argv: list[str] | None = None) -> FrontendConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = FrontendConfig.from_cli_args(args)
    try:
        config.kv_router = kv_router_config(args)
        config.conditional_disagg = conditional_disagg_config(config)
    except ConfigError as exc:
        parser.error(str(exc))
    # The frontend serves every namespace unless one is asked for explicitly.
    argv_list = argv if argv is not None else sys.argv[1:]
    explicit = any(a == "--namespace" or a.startswith("--namespace=") for a in argv_list) or "DYN_NAMESPACE" in os.environ
    config.model_filter_namespace = config.namespace if explicit else None
    return config
