"""``python -m dynamo.global_router`` refuses bad configuration with one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.procs import REPO
from tests.unit.test_global_router_selection import BAD_CONFIGS, agg_config

pytestmark = pytest.mark.e2e


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "dynamo.global_router", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m dynamo.global_router: error: ")
    assert message in lines[0]


@pytest.mark.parametrize("name,config,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_file(tmp_path, name, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert_one_line_exit_2(run("--config", str(path), "--model-name", "M"), message)


def test_unusable_files_and_missing_flags(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(agg_config()))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert_one_line_exit_2(run("--config", str(tmp_path / "nope.json"), "--model-name", "M"), "--config: cannot read")
    assert_one_line_exit_2(run("--config", str(broken), "--model-name", "M"), "is not valid JSON")
    assert_one_line_exit_2(run("--model-name", "M"), "--config is required")
    assert_one_line_exit_2(run("--config", str(good)), "--model-name is required")
    assert_one_line_exit_2(run("--config", str(good), "--model-name", "M", "--default-itl-target-ms", "-1"),
                           "--default-itl-target-ms: must be >= 0")
    # Environment values are checked like flags.
    proc = run("--config", str(good), "--model-name", "M", env={"DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET_MS": "soon"})
    assert proc.returncode == 2 and "DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET_MS" in proc.stderr
