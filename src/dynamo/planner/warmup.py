"""Warm-start series for the load predictors from a trace (``--load-predictor-warmup-trace``).

Two formats: the Azure 2023 CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``, wall-clock timestamps)
and Mooncake JSONL (``timestamp`` in ms, ``input_length``, ``output_length``). Requests are bucketed by
the adjustment interval into (requests, mean ISL, mean OSL) per interval.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

from dynamo.runtime.errors import ConfigError

Request = tuple[float, int, int]  # (seconds from trace start, isl, osl)


def read_trace(path: str | Path) -> list[Request]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--load-predictor-warmup-trace: file not found: {p}")
    out: list[Request] = []
    try:
        if p.suffix == ".csv":
            with p.open(newline="") as f:
                t0: datetime | None = None
                for row in csv.DictReader(f):
                    ts = datetime.fromisoformat(row["TIMESTAMP"][:26])
                    t0 = t0 or ts
                    out.append(((ts - t0).total_seconds(), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
        else:
            with p.open() as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        out.append((r["timestamp"] / 1000.0, int(r["input_length"]), int(r["output_length"])))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"--load-predictor-warmup-trace {p}: unreadable trace ({exc})") from exc
    return out


def bucket(requests: list[Request], interval_s: float) -> list[tuple[float, float, float]]:
    """(request count, mean ISL, mean OSL) per interval; NaN means for an empty interval."""
    if not requests:
        return []
    start = min(r[0] for r in requests)
    n = int((max(r[0] for r in requests) - start) // interval_s) + 1
    counts, isl, osl = [0] * n, [0] * n, [0] * n
    for t, i, o in requests:
        k = int((t - start) // interval_s)
        counts[k] += 1
        isl[k] += i
        osl[k] += o
    return [(float(c), isl[k] / c if c else math.nan, osl[k] / c if c else math.nan) for k, c in enumerate(counts)]
