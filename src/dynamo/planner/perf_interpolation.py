"""Engine performance from profiling NPZs (reference §7.1 step 4, data format §3.3): TTFT and prefill
throughput per GPU against ISL; ITL and decode throughput per GPU against KV usage and context length.

Pure numpy, no I/O beyond :func:`load_profile`. Interpolation is piecewise linear and clamped to the
profiled range rather than the reference's cubic splines and ``griddata``: the profiled points are
noisy (throughput dips between neighbours), cubic fits overshoot between them, and a planner acting on
an overshoot buys GPUs it does not need. Decode data comes as rows of one context length each (a KV
usage sweep), so decode values are linear in KV usage within a row and linear in context between rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamo.runtime.errors import ConfigError

GRID_POINTS = 100


@dataclass(frozen=True)
class PrefillProfile:
    isl: np.ndarray  # sorted ascending
    ttft_ms: np.ndarray
    thpt_per_gpu: np.ndarray  # tokens/s/GPU

    def ttft_s(self, isl: float) -> float:
        return float(np.interp(isl, self.isl, self.ttft_ms)) / 1000.0

    def throughput_per_gpu(self, isl: float) -> float:
        return float(np.interp(isl, self.isl, self.thpt_per_gpu))


@dataclass(frozen=True)
class _DecodeRow:
    context: float
    kv_usage: np.ndarray  # sorted ascending
    itl_ms: np.ndarray
    thpt_per_gpu: np.ndarray


class DecodeProfile:
    """ITL (ms) and decode throughput (tokens/s/GPU) over (KV usage 0..1, context length)."""

    def __init__(self, kv_usage: np.ndarray, context: np.ndarray, itl_ms: np.ndarray, thpt_per_gpu: np.ndarray,
                 max_kv_tokens: int) -> None:
        if max_kv_tokens <= 0:
            raise ConfigError("decode profile: max_kv_tokens must be positive")
        self.max_kv_tokens = int(max_kv_tokens)
        rows = []
        for ctx in np.unique(context):
            sel = context == ctx
            order = np.argsort(kv_usage[sel])
            rows.append(_DecodeRow(float(ctx), kv_usage[sel][order], itl_ms[sel][order], thpt_per_gpu[sel][order]))
        if not rows:
            raise ConfigError("decode profile has no points")
        self.rows = rows

    def _bracket(self, context: float) -> tuple[_DecodeRow, _DecodeRow, float]:
        rows = self.rows
        if context <= rows[0].context:
            return rows[0], rows[0], 0.0
        if context >= rows[-1].context:
            return rows[-1], rows[-1], 0.0
        for lo, hi in itertools.pairwise(rows):
            if lo.context <= context <= hi.context:
                return lo, hi, (context - lo.context) / (hi.context - lo.context)
        raise AssertionError("unreachable: rows are sorted")

    def _at(self, kv_usage: float, context: float) -> tuple[float, float]:
        lo, hi, w = self._bracket(context)
        itl = (1 - w) * np.interp(kv_usage, lo.kv_usage, lo.itl_ms) + w * np.interp(kv_usage, hi.kv_usage, hi.itl_ms)
        thpt = ((1 - w) * np.interp(kv_usage, lo.kv_usage, lo.thpt_per_gpu)
                + w * np.interp(kv_usage, hi.kv_usage, hi.thpt_per_gpu))
        return float(itl), float(thpt)

    def itl_s(self, kv_usage: float, context: float) -> float:
        return self._at(kv_usage, context)[0] / 1000.0

    def throughput_per_gpu_at(self, kv_usage: float, context: float) -> float:
        return self._at(kv_usage, context)[1]

    def kv_usage(self, concurrency: float, context: float) -> float:
        """Share of the KV cache ``concurrency`` sequences of ``context`` tokens occupy."""
        return concurrency * context / self.max_kv_tokens

    def expected_itl_s(self, concurrency: float, context: float) -> float:
        return self.itl_s(self.kv_usage(concurrency, context), context)

    def best_throughput_per_gpu(self, itl_target_s: float, context: float) -> float:
        """Throughput per GPU at the highest KV usage (on a 100-point grid up to the profiled maximum
        at this context) whose ITL meets the target; the lowest point's throughput if none does."""
        lo, hi, w = self._bracket(context)
        top = (1 - w) * float(lo.kv_usage[-1]) + w * float(hi.kv_usage[-1])
        target_ms = itl_target_s * 1000.0
        grid = np.linspace(0.0, top, GRID_POINTS)
        for usage in grid[::-1]:
            itl, thpt = self._at(float(usage), context)
            if itl <= target_ms:
                return thpt
        return self._at(0.0, context)[1]


@dataclass(frozen=True)
class PerfProfile:
    prefill: PrefillProfile
    decode: DecodeProfile


def _row(arr: np.ndarray, index: int) -> np.ndarray:
    return arr[index] if arr.ndim == 2 else arr


def _pick_row(data: np.lib.npyio.NpzFile, key: str, tp: int | None) -> int:
    """Pre-swept files hold one row per parallel config; pick the row with tensor parallel ``tp``."""
    if data[key].ndim < 2 or "tp" not in data.files:
        return 0
    tps = [int(t) for t in np.ravel(data["tp"])]
    return tps.index(tp) if tp in tps else 0


def prefill_from_npz(path: Path, tp: int | None = None) -> PrefillProfile:
    with np.load(path) as data:
        missing = {"prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu"} - set(data.files)
        if missing:
            raise ConfigError(f"{path}: not a prefill profile (missing {', '.join(sorted(missing))})")
        i = _pick_row(data, "prefill_isl", tp)
        isl = _row(data["prefill_isl"], i).astype(float)
        order = np.argsort(isl)
        return PrefillProfile(isl[order], _row(data["prefill_ttft"], i).astype(float)[order],
                              _row(data["prefill_thpt_per_gpu"], i).astype(float)[order])


def decode_from_npz(path: Path, tp: int | None = None) -> DecodeProfile:
    with np.load(path) as data:
        missing = {"x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu", "max_kv_tokens"} - set(data.files)
        if missing:
            raise ConfigError(f"{path}: not a decode profile (missing {', '.join(sorted(missing))})")
        i = _pick_row(data, "x_kv_usage", tp)
        return DecodeProfile(_row(data["x_kv_usage"], i).astype(float), _row(data["y_context_length"], i).astype(float),
                             _row(data["z_itl"], i).astype(float), _row(data["z_thpt_per_gpu"], i).astype(float),
                             int(np.ravel(data["max_kv_tokens"])[i if data["max_kv_tokens"].size > 1 else 0]))


def load_profile(directory: str | Path, prefill_tp: int | None = None, decode_tp: int | None = None) -> PerfProfile:
    """Read a profiler results directory (``selected_{prefill,decode}_interpolation/raw_data.npz``) or a
    pre-swept one (``prefill.npz`` + ``decode.npz``, one row per tensor-parallel size)."""
    root = Path(directory).expanduser()
    candidates = [
        (root / "selected_prefill_interpolation" / "raw_data.npz", root / "selected_decode_interpolation" / "raw_data.npz"),
        (root / "prefill.npz", root / "decode.npz"),
    ]
    for prefill, decode in candidates:
        if prefill.is_file() and decode.is_file():
            return PerfProfile(prefill_from_npz(prefill, prefill_tp), decode_from_npz(decode, decode_tp))
    raise ConfigError(f"--profile-results-dir {root}: expected selected_prefill_interpolation/raw_data.npz and "
                      "selected_decode_interpolation/raw_data.npz, or prefill.npz and decode.npz")
