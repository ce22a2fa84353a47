"""Global router flags (reference §6): CLI > ``DYN_GLOBAL_ROUTER_*`` environment > default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynamo.common.configuration import ArgGroup, ArgumentContainer, add_argument
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.global_router.pool_selection import GlobalRouterConfig, parse_config
from dynamo.runtime.errors import ConfigError


class GlobalRouterArgs(RuntimeConfig):
    config_path: str | None = None
    model_name: str | None = None
    model_path: str | None = None
    component_name: str = "global_router"
    default_ttft_target_ms: float | None = None
    default_itl_target_ms: float | None = None
    verbose: int = 0

    def validate(self) -> None:
        super().validate()
        if not self.config_path or not self.config_path.strip():
            raise ConfigError("--config is required (or DYN_GLOBAL_ROUTER_CONFIG): the pools' JSON config file")
        if not self.model_name or not self.model_name.strip():
            raise ConfigError("--model-name is required (or DYN_GLOBAL_ROUTER_MODEL_NAME): the served model")
        for flag, value in (("--default-ttft-target-ms", self.default_ttft_target_ms),
                            ("--default-itl-target-ms", self.default_itl_target_ms)):
            if value is not None and value < 0:
                raise ConfigError(f"{flag}: must be >= 0, got {value}")

    def load_pools(self) -> GlobalRouterConfig:
        """Read and validate the ``--config`` file (ConfigError, one line, when it is unusable)."""
        assert self.config_path is not None
        path = Path(self.config_path).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {self.config_path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--config: {self.config_path} is not valid JSON: {exc}") from None
        return parse_config(data)


class GlobalRouterArgGroup(ArgGroup):
    def add_arguments(self, parser: ArgumentContainer) -> None:
        g = parser.add_argument_group("global router")
        add_argument(g, "--config", "DYN_GLOBAL_ROUTER_CONFIG", None,
                     "JSON file: the pools' namespaces and selection grids (mode disagg or agg).", dest="config_path")
        add_argument(g, "--model-name", "DYN_GLOBAL_ROUTER_MODEL_NAME", None,
                     "Model name to register (must match the pools' workers).")
        add_argument(g, "--model-path", "DYN_GLOBAL_ROUTER_MODEL_PATH", None,
                     "Model folder or hub id whose tokenizer the registered cards carry (default: --model-name).")
        add_argument(g, "--component-name", "DYN_GLOBAL_ROUTER_COMPONENT_NAME", "global_router",
                     "Component the global router serves its endpoints under.")
        add_argument(g, "--default-ttft-target-ms", ("DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET_MS",
                                                     "DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET"), None,
                     "TTFT target (ms) for requests that name none (else the grid's midpoint).",
                     obsolete_flag="--default-ttft-target", arg_type=float)
        add_argument(g, "--default-itl-target-ms", ("DYN_GLOBAL_ROUTER_DEFAULT_ITL_TARGET_MS",
                                                    "DYN_GLOBAL_ROUTER_DEFAULT_ITL_TARGET"), None,
                     "ITL target (ms) for requests that name none (else the grid's midpoint).",
                     obsolete_flag="--default-itl-target", arg_type=float)


def build_parser() -> argparse.ArgumentParser:
    from dynamo.global_router import __main__ as entry

    p = argparse.ArgumentParser(prog="python -m dynamo.global_router", description=entry.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    RuntimeArgGroup().add_arguments(p)
    GlobalRouterArgGroup().add_arguments(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return p
