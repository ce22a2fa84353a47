"""``python -m dynamo.frontend -i``: chat in the terminal with a discovered model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e


def test_interactive_answers_and_exits_on_eof():
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100")
        proc = subprocess.run([sys.executable, "-m", "dynamo.frontend", "-i"], input="Hello there\n",
                              capture_output=True, text=True, timeout=60, env=dep.env)
        assert proc.returncode == 0, proc.stderr
        # One prompt answered (mocker text is random), then the prompt again and a clean exit at EOF.
        assert proc.stdout.count("? User: ") == 2
        answer = proc.stdout.split("? User: ")[1]
        assert answer.strip()
    finally:
        dep.close()
