"""``python -m dynamo.replay`` as a subprocess: table, JSON report, clear errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SRC = Path(__file__).resolve().parents[2] / "src"


def replay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamo.replay", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


def test_trace_replay_prints_the_table_and_writes_the_report(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    lines = [{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]},
             {"timestamp": 100, "input_length": 1100, "output_length": 3, "hash_ids": [0, 1, 2]},
             {"timestamp": 250, "input_length": 400, "output_length": 4, "hash_ids": [7]}]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "report.json"
    res = replay(str(trace), "--num-workers", "2", "--router-mode", "kv_router", "--report-json", str(out),
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Time to First Token (ms)" in res.stdout and "Prefix Cache Reused Ratio" in res.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["completed_requests"] == 3
    recs = report["per_request"]
    # The second request extends the first one's prompt: the KV router sends it to the same worker.
    assert recs[1]["worker"] == recs[0]["worker"] and recs[1]["reused_input_tokens"] == 640


@pytest.mark.parametrize("args, message", [
    ((), "needs --input-tokens"),
    (("missing.jsonl",), "cannot read trace missing.jsonl"),
    (("bad.jsonl",), "bad.jsonl: line 1: not JSON"),
    (("--input-tokens", "10", "--output-tokens", "2", "--request-count", "1", "--num-workers", "0"), "--num-workers"),
    (("--input-tokens", "10", "--output-tokens", "2", "--request-count", "1", "--planner"), "--profile-results-dir"),
])
def test_bad_input_is_a_one_line_error(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    res = replay(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_planner_in_simulated_time_reports_workers_over_time(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = replay("--input-tokens", "2000", "--output-tokens", "200", "--request-count", "400", "--request-rate", "20",
                 "--router-mode", "round_robin", "--planner", "--no-enable-throughput-scaling",
                 "--enable-loadbased-scaling", "--ttft", "300", "--itl", "30", "--isl", "2000",
                 "--report-json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "SLA Attainment (TTFT <= 300.00 ms, ITL <= 30.00 ms)" in res.stdout
    assert "workers started" in res.stdout
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["completed_requests"] == 400 and summary["peak_workers"] > 1
    timeline = report["workers_timeline"]
    assert timeline[0] == {"time_ms": 0.0, "serving": 1, "starting": 0, "draining": 0}
    assert max(p["serving"] + p["starting"] + p["draining"] for p in timeline) == summary["peak_workers"]
