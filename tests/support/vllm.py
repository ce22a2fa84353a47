"""Real vLLM workers for end-to-end tests: availability check, the tiny model, worker processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy import Deployment

#: the tiny model's KV block size on the CPU backend (must be a multiple of 32 there)
BLOCK = 32
MAX_MODEL_LEN = 2048


def require_vllm() -> None:
    """Skip loudly where vLLM cannot be imported; in CI that is a failure, never a skip."""
    if importlib.util.find_spec("vllm") is not None:
        return
    reason = ("vLLM is not installed in this environment (`make vllm` installs the CPU build); "
              "the real-engine tests cannot run")
    if os.environ.get("CI"):
        pytest.fail(reason + " — CI must run them")
    print(f"\n*** SKIPPING REAL-ENGINE TESTS: {reason} ***", file=sys.stderr)
    pytest.skip(reason)


def write_tiny_model(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "dynamo.vllm.tiny_model", str(out)], check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    return out


def vllm_worker(dep: Deployment, name: str, model: Path, *extra: str, core: int | None = None,
                env: dict[str, str] | None = None):
    """Start ``python -m dynamo.vllm`` on the tiny model (eager mode, 1 GiB KV cache, one core)."""
    wenv = {"VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    if core is not None:
        wenv["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
    return dep.spawn(name, "-m", "dynamo.vllm", "--model", str(model), "--served-model-name", "tiny-qwen3",
                     "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN), "--block-size", str(BLOCK), *extra,
                     env=wenv)
