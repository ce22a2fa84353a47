"""Flags of ``python -m dynamo.vllm``: the runtime group, the Dynamo vLLM group, and vLLM's own engine flags.

One parser carries all three, so ``--help`` lists every flag and any vLLM engine flag works unchanged.
Dynamo's groups resolve CLI > environment > default like every other component; vLLM's flags keep
vLLM's own defaults. A bad flag or combination is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dynamo.common.configuration import ArgGroup, ArgumentContainer, add_argument, add_negatable_bool_argument
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.runtime.errors import ConfigError

#: multimodal roles: at most one per worker, each needs --enable-multimodal (seed 001)
MULTIMODAL_ROLES = (
    "multimodal_processor",
    "ec_processor",
    "multimodal_encode_worker",
    "multimodal_worker",
    "multimodal_decode_worker",
    "multimodal_encode_prefill_worker",
)


class VllmConfig(RuntimeConfig):
    """Dynamo-side settings of a vLLM worker; the engine's own settings live in ``AsyncEngineArgs``."""

    endpoint: str | None = None
    is_prefill_worker: bool = False
    is_decode_worker: bool = False
    use_vllm_tokenizer: bool = False
    migration_limit: int = 0
    enable_multimodal: bool = False
    multimodal_processor: bool = False
    ec_processor: bool = False
    multimodal_encode_worker: bool = False
    multimodal_worker: bool = False
    multimodal_decode_worker: bool = False
    multimodal_encode_prefill_worker: bool = False
    vllm_native_encoder_worker: bool = False
    ec_connector_backend: str = "ECExampleConnector"
    ec_storage_path: str | None = None
    ec_extra_config: str | None = None
    ec_consumer_mode: str = "shm"
    omni: bool = False
    stage_configs_path: str | None = None
    sleep_mode_level: int | None = None
    verbose: int = 0

    @property
    def component(self) -> str:
        return "prefill" if self.is_prefill_worker else "backend"

    @property
    def role(self) -> str:
        """``aggregated``, ``prefill`` or ``decode``."""
        return "prefill" if self.is_prefill_worker else "decode" if self.is_decode_worker else "aggregated"

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or f"dyn://{self.namespace}.{self.component}.generate"

    def validate(self) -> None:
        super().validate()
        if self.is_prefill_worker and self.is_decode_worker:
            raise ConfigError("--is-prefill-worker and --is-decode-worker are mutually exclusive")
        roles = [r for r in MULTIMODAL_ROLES if getattr(self, r)]
        if len(roles) > 1:
            raise ConfigError("multimodal roles are mutually exclusive: " + ", ".join(_flag(r) for r in roles))
        if roles and not self.enable_multimodal:
            raise ConfigError(f"{_flag(roles[0])} needs --enable-multimodal")
        if self.vllm_native_encoder_worker and self.ec_connector_backend == "ECExampleConnector" \
                and not self.ec_storage_path:
            raise ConfigError("--ec-connector-backend ECExampleConnector needs --ec-storage-path")
        if self.stage_configs_path and not self.omni:
            raise ConfigError("--stage-configs-path is only valid with --omni")
        if self.ec_extra_config:
            try:
                json.loads(self.ec_extra_config)
            except ValueError as exc:
                raise ConfigError(f"--ec-extra-config is not valid JSON: {exc}") from None
        if not 0 <= self.migration_limit <= 1023:
            raise ConfigError("--migration-limit must be in [0, 1023]")
        # Parsed and validated above so that scripts fail the same way once these land; serving them
        # needs pieces this worker does not have yet.
        unbuilt = [
            (self.use_vllm_tokenizer,
             "--use-vllm-tokenizer is not available yet; the frontend tokenizes with the model's tokenizer"),
            (self.enable_multimodal or bool(roles) or self.vllm_native_encoder_worker,
             "multimodal workers are not available yet (text models only)"),
            (self.omni, "--omni (vLLM-Omni pipelines) is not available yet"),
            (self.sleep_mode_level is not None, "--sleep-mode-level is not available yet"),
        ]
        for hit, message in unbuilt:
            if hit:
                raise ConfigError(message)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class DynamoVllmArgGroup(ArgGroup):
    """The vLLM worker's Dynamo flags (seed 001): roles, tokenizer, migration, multimodal, omni, sleep."""

    def add_arguments(self, parser: ArgumentContainer) -> None:
        d = VllmConfig
        add_argument(parser, "--endpoint", "DYN_ENDPOINT", d.endpoint,
                     "Endpoint to serve (default dyn://{namespace}.backend.generate, "
                     "or {namespace}.prefill.generate for a prefill worker).")
        add_negatable_bool_argument(parser, "--is-prefill-worker", "DYN_VLLM_IS_PREFILL_WORKER", d.is_prefill_worker,
                                    "Serve prefill only (disaggregated serving).")
        add_negatable_bool_argument(parser, "--is-decode-worker", "DYN_VLLM_IS_DECODE_WORKER", d.is_decode_worker,
                                    "Serve decode only (disaggregated serving).")
        add_negatable_bool_argument(parser, "--use-vllm-tokenizer", "DYN_VLLM_USE_TOKENIZER", d.use_vllm_tokenizer,
                                    "Let vLLM tokenize text instead of the frontend.")
        add_argument(parser, "--migration-limit", "DYN_MIGRATION_LIMIT", d.migration_limit,
                     "How many times the frontend may move a request off this worker when it fails (0-1023).",
                     arg_type=int)
        mm = parser.add_argument_group("multimodal and vLLM-Omni") if isinstance(parser, argparse.ArgumentParser) \
            else parser
        add_negatable_bool_argument(mm, "--enable-multimodal", "DYN_VLLM_ENABLE_MULTIMODAL", d.enable_multimodal,
                                    "Enable a multimodal role.")
        for role in MULTIMODAL_ROLES:
            add_negatable_bool_argument(mm, _flag(role), f"DYN_VLLM_{role.upper()}", False,
                                        f"Run as the {role.replace('_', ' ')} (needs --enable-multimodal).")
        add_negatable_bool_argument(mm, "--vllm-native-encoder-worker", "DYN_VLLM_NATIVE_ENCODER_WORKER", False,
                                    "Run vLLM's own encoder worker (ECConnector).")
        add_argument(mm, "--ec-connector-backend", "DYN_VLLM_EC_CONNECTOR_BACKEND", d.ec_connector_backend,
                     "ECConnector backend.")
        add_argument(mm, "--ec-storage-path", "DYN_VLLM_EC_STORAGE_PATH", d.ec_storage_path,
                     "Shared storage for encoder outputs (ECExampleConnector).")
        add_argument(mm, "--ec-extra-config", "DYN_VLLM_EC_EXTRA_CONFIG", d.ec_extra_config,
                     "Extra ECConnector configuration (JSON).")
        add_argument(mm, "--ec-consumer-mode", "DYN_VLLM_EC_CONSUMER_MODE", d.ec_consumer_mode,
                     "How encoder outputs reach the consumer.")
        add_negatable_bool_argument(mm, "--omni", "DYN_VLLM_OMNI", d.omni, "Serve a vLLM-Omni multi-stage pipeline.")
        add_argument(mm, "--stage-configs-path", "DYN_VLLM_STAGE_CONFIGS_PATH", d.stage_configs_path,
                     "vLLM-Omni stage configuration file (only with --omni).")
        add_argument(mm, "--sleep-mode-level", "DYN_VLLM_SLEEP_MODE_LEVEL", d.sleep_mode_level,
                     "Sleep mode level (1, 2 or 3).", arg_type=int, choices=[1, 2, 3])


class _OneLineParser(argparse.ArgumentParser):
    """vLLM's parser raising ConfigError instead of printing usage, so every bad flag is one line."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """Our groups plus vLLM's engine flags on one parser (imports vLLM)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class Parser(_OneLineParser, FlexibleArgumentParser):
        pass

    from dynamo.vllm import __doc__ as package_doc

    parser = Parser(prog="python -m dynamo.vllm", description=package_doc,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="Model directory or Hugging Face id (same as --model).")
    RuntimeArgGroup().add_arguments(parser.add_argument_group("Dynamo runtime"))
    DynamoVllmArgGroup().add_arguments(parser.add_argument_group("Dynamo vLLM worker"))
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    AsyncEngineArgs.add_cli_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[VllmConfig, Any]:
    """``(VllmConfig, vllm AsyncEngineArgs)``; ConfigError on any bad flag or combination."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.model_tag is not None:
        ns.model = ns.model_tag
    config = VllmConfig.from_cli_args(ns)
    config.validate()
    try:
        engine_args = AsyncEngineArgs.from_cli_args(ns)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid vLLM engine argument: {exc}") from None
    check_kv_transfer(config, engine_args)
    return config, engine_args


#: what --kv-transfer-config looks like for the connector known to move KV on vLLM's CPU platform
EXAMPLE_KV_TRANSFER = ('{"kv_connector": "ExampleConnector", "kv_role": "kv_both", '
                       '"kv_connector_extra_config": {"shared_storage_path": "/some/shared/dir"}}')


def check_kv_transfer(config: VllmConfig, engine_args: Any) -> None:
    """A prefill or decode worker moves KV through a vLLM KV connector, which it must be given."""
    if config.role == "aggregated":
        return
    cfg = engine_args.kv_transfer_config
    if cfg is None or not getattr(cfg, "kv_connector", None):
        raise ConfigError(f"--is-{config.role}-worker needs a KV connector to move the KV cache between "
                          f"workers: add --kv-transfer-config '{EXAMPLE_KV_TRANSFER}' (or NixlConnector on GPUs)")


def kv_events_source(engine_args: Any) -> str | None:
    """Where the engine's KV events come from: ``"bind"`` (the default: the worker binds a loopback
    socket that the engine publishes to), an endpoint to connect to (the user configured a binding
    publisher, e.g. ``tcp://*:5557``), or ``None`` when they are off
    (``--kv-events-config '{"enable_kv_cache_events": false}'``, or prefix caching disabled: no reuse
    to route on).
    """
    if engine_args.enable_prefix_caching is False:
        return None
    cfg = engine_args.kv_events_config
    if cfg is None:
        return "bind"
    if not cfg.enable_kv_cache_events or cfg.publisher != "zmq":
        return None
    if "*" not in cfg.endpoint and "0.0.0.0" not in cfg.endpoint:
        raise ConfigError("--kv-events-config: give a binding endpoint (tcp://*:PORT) or leave the endpoint "
                          "out; the worker subscribes to it on this host")
    return cfg.endpoint.replace("*", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")


def use_kv_events_endpoint(engine_args: Any, endpoint: str) -> None:
    """Tell the engine to publish its KV events to ``endpoint`` (a socket the worker bound)."""
    from vllm.config import KVEventsConfig

    engine_args.kv_events_config = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint)
