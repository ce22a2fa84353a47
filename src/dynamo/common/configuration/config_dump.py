"""``--dump-config-to``: a reproducible snapshot of how a process was configured.

The dump is one line of canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) holding the parsed
config plus the system, interpreter, relevant environment variables (secrets redacted) and package
versions, so two dumps can be diffed or hashed to tell whether two processes ran the same setup.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.metadata
import json
import logging
import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import msgspec

import dynamo
from dynamo.common.configuration.utils import ArgumentContainer, add_argument

logger = logging.getLogger(__name__)

#: environment variables whose names start with one of these are recorded
ENV_PREFIXES: tuple[str, ...] = (
    "DYN_", "CUDA_", "NCCL_", "HF_", "TRANSFORMERS_", "SGLANG_", "SGL_", "MC_", "VLLM_", "TENSORRT_",
    "TORCH_", "PYTORCH_", "UCX_", "NIXL_", "OMPI_", "LLM_", "TLLM_", "TRT_LLM_", "TRTLLM_", "NVIDIA_",
    "NSYS_", "ETCD_", "NATS_",
)  # fmt: skip
#: recorded variables whose names contain one of these have their value replaced by ``<REDACTED>``
SECRET_MARKERS: tuple[str, ...] = ("TOKEN", "API_KEY", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
REDACTED = "<REDACTED>"

# A short list: looking up every installed distribution would make each dump slow.
_PACKAGES: tuple[str, ...] = (
    "dynamo-py", "msgspec", "orjson", "pydantic", "fastapi", "uvicorn", "pyzmq", "nats-py", "aetcd",
    "tokenizers", "jinja2", "numpy", "torch", "transformers", "vllm", "sglang", "tensorrt_llm",
)  # fmt: skip
_ENGINE_VERSION_KEYS = {"vllm": "vllm_version", "sglang": "sglang_version", "tensorrt_llm": "trtllm_version"}


def add_dump_config_argument(parser: ArgumentContainer) -> None:
    """Register ``--dump-config-to`` (``DYN_DUMP_CONFIG_TO``)."""
    add_argument(
        parser,
        "--dump-config-to",
        "DYN_DUMP_CONFIG_TO",
        None,
        "Write the resolved configuration, environment and versions as one line of JSON to this file "
        "('-' for stdout), then continue.",
    )


class ConfigDumpEncoder(json.JSONEncoder):
    """Encodes what configs hold: sets (sorted), enums (``str``), paths, pydantic models, msgspec
    structs, dataclasses and plain objects or argparse Namespaces (their ``__dict__``)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            try:
                return sorted(o)
            except TypeError:  # mixed types: any stable order will do
                return sorted(o, key=repr)
        if isinstance(o, enum.Enum):
            return str(o)
        if isinstance(o, PurePath):
            return str(o)
        if isinstance(o, msgspec.Struct):
            return msgspec.to_builtins(o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if callable(getattr(o, "model_dump", None)):  # pydantic, without importing it
            return o.model_dump()
        if isinstance(o, bytes):
            return o.decode("utf-8", errors="replace")
        if isinstance(o, argparse.Namespace) or hasattr(o, "__dict__"):
            return vars(o)
        return repr(o)


def canonical_json(value: Any) -> str:
    """One line of JSON with sorted keys and no whitespace; NaN/inf are rejected (ValueError)."""
    return json.dumps(
        value,
        cls=ConfigDumpEncoder,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def collect_config_dump(config: Any) -> dict[str, Any]:
    """Everything a dump records; ``config`` is left for the encoder to serialize."""
    packages = installed_packages()
    dump: dict[str, Any] = {
        "system_info": system_info(),
        "environment": relevant_environment(),
        "config": config,
        "runtime_info": runtime_info(),
        "dynamo_version": dynamo.__version__,
        "installed_packages": packages,
    }
    for package, key in _ENGINE_VERSION_KEYS.items():
        if package in packages:
            dump[key] = packages[package]
    return dump


def get_config_dump(config: Any) -> str:
    """The dump of ``config`` as canonical JSON."""
    return canonical_json(collect_config_dump(config))


def dump_config(dump_to: str | os.PathLike[str] | None, config: Any) -> None:
    """Write the dump to ``dump_to`` (``-`` = stdout; parent dirs created), or log it at DEBUG if unset.

    Never raises: a configuration snapshot must not stop a server from starting, so failures are
    logged with the ``CONFIG_DUMP:`` prefix.
    """
    if dump_to is None:
        if logger.isEnabledFor(logging.DEBUG):
            try:
                logger.debug("CONFIG_DUMP: %s", get_config_dump(config))
            except (TypeError, ValueError) as err:
                logger.debug("CONFIG_DUMP: cannot serialize config: %s", err)
        return
    try:
        text = get_config_dump(config) + "\n"
        if str(dump_to) == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        path = Path(dump_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except (OSError, TypeError, ValueError) as err:
        logger.error("CONFIG_DUMP: failed to dump config to %s: %s", dump_to, err)
        return
    logger.info("CONFIG_DUMP: config written to %s", dump_to)


def relevant_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables with a recorded prefix, secrets redacted."""
    environ = os.environ if environ is None else environ
    return {
        name: REDACTED if any(marker in name.upper() for marker in SECRET_MARKERS) else value
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIXES)
    }


def system_info() -> dict[str, str]:
    uname = platform.uname()
    return {
        "platform": platform.platform(),
        "architecture": uname.machine,
        "processor": uname.processor,
        "hostname": socket.gethostname(),
        "os_name": uname.system,
        "os_release": uname.release,
        "os_version": uname.version,
    }


def runtime_info() -> dict[str, Any]:
    return {
        "python_version": platform.python_version(),
        "python_version_info": list(sys.version_info[:3]),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }


def installed_packages() -> dict[str, str]:
    """Versions of the few distributions that shape behaviour; absent ones are omitted."""
    versions: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
