"""Timing models of the simulated engine (reference §3.3, §3.2 step 4).

* :class:`PolynomialPerfModel` (default): prefill ms = ``4.209989e-7·T² + 1.518344e-2·T + 16.50142`` with
  ``T = batch_count × (mean_isl − mean_prefix)``; decode ms = ``−25.74·u² + 54.01·u + 5.74`` with
  ``u = active_kv_tokens / total_kv_tokens``. Prefill is floored at 0 ms, decode at 1 ms.
* :class:`InterpolatedPerfModel` (``--planner-profile-data``): 1-D linear interpolation (with linear
  extrapolation) of prefill TTFT over ``T``, 2-D bilinear interpolation (with extrapolation) of the decode
  ITL over ``(active_kv_tokens, context_length)``. Loads a mocker-format NPZ, a profiler results
  directory (``selected_{prefill,decode}_interpolation/raw_data.npz`` or ``*_raw_data.json``), or a
  planner pre-swept directory (``prefill.npz`` + ``decode.npz``).

Pass duration = ``prefill_ms / speedup_ratio + decode_ms / (speedup_ratio × decode_speedup_ratio)``.
Everything here is pure Python on the hot path (numpy is used only while loading), because the
scheduler calls these once or twice per pass and numpy scalar overhead would dominate.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dynamo.runtime.errors import ConfigError

#: mocker-format NPZ keys (reference §3.3)
MOCKER_NPZ_KEYS = ("prefill_isl", "prefill_ttft_ms", "decode_active_kv_tokens", "decode_context_length", "decode_itl")
#: resolution of the decode grid built from scattered profiler samples (upstream converter uses 100)
DEFAULT_GRID_RESOLUTION = 100


class PerfModel(Protocol):
    def predict_prefill_ms(self, batch_count: int, mean_isl: int, mean_prefix: int) -> float:
        """Time of the prefill part of a pass, in unscaled milliseconds."""
        ...

    def predict_decode_ms(
        self, batch_size: int, active_kv_tokens: int, context_length: int, total_kv_tokens: int
    ) -> float:
        """Time of one decode step of ``batch_size`` sequences, in unscaled milliseconds."""
        ...


class PolynomialPerfModel:
    """The built-in polynomial fits of the reference (default timing model)."""

    PREFILL_A = 4.209989e-07
    PREFILL_B = 1.518344e-02
    PREFILL_C = 16.50142
    DECODE_A = -25.74
    DECODE_B = 54.01
    DECODE_C = 5.74

    def predict_prefill_ms(self, batch_count: int, mean_isl: int, mean_prefix: int) -> float:
        new_tokens = mean_isl - mean_prefix
        if batch_count <= 0 or new_tokens <= 0:
            return 0.0
        t = batch_count * new_tokens
        ms = (self.PREFILL_A * t + self.PREFILL_B) * t + self.PREFILL_C
        return ms if ms > 0.0 else 0.0

    def predict_decode_ms(
        self, batch_size: int, active_kv_tokens: int, context_length: int, total_kv_tokens: int
    ) -> float:
        if batch_size <= 0:
            return 0.0
        u = active_kv_tokens / total_kv_tokens if total_kv_tokens > 0 else 0.0
        ms = (self.DECODE_A * u + self.DECODE_B) * u + self.DECODE_C
        return ms if ms > 1.0 else 1.0


def _segment(xs: list[float], x: float) -> int:
    """Index ``i`` of the segment ``[xs[i], xs[i+1]]`` used for ``x``; edge segments extrapolate."""
    i = bisect_right(xs, x) - 1
    if i < 0:
        return 0
    last = len(xs) - 2
    return i if i < last else last


class Interp1D:
    """Piecewise-linear interpolation over sorted ``xs`` with linear extrapolation past both ends."""

    __slots__ = ("xs", "ys")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        pairs = sorted(zip((float(x) for x in xs), (float(y) for y in ys), strict=True))
        if len(pairs) < 2:
            raise ConfigError("interpolation needs at least two points")
        self.xs = [p[0] for p in pairs]
        self.ys = [p[1] for p in pairs]
        if any(b <= a for a, b in pairwise(self.xs)):
            raise ConfigError("interpolation x values must be distinct")

    def __call__(self, x: float) -> float:
        xs = self.xs
        i = _segment(xs, x)
        x0 = xs[i]
        y0 = self.ys[i]
        return y0 + (self.ys[i + 1] - y0) * (x - x0) / (xs[i + 1] - x0)


class Interp2D:
    """Bilinear interpolation on a rectilinear grid ``z[ix][iy]`` with linear extrapolation."""

    __slots__ = ("xs", "ys", "z")

    def __init__(self, xs: Sequence[float], ys: Sequence[float], z: Sequence[Sequence[float]]) -> None:
        self.xs = [float(v) for v in xs]
        self.ys = [float(v) for v in ys]
        self.z = [[float(v) for v in row] for row in z]
        if len(self.xs) < 2 or len(self.ys) < 2:
            raise ConfigError("2-D interpolation needs at least a 2x2 grid")
        if len(self.z) != len(self.xs) or any(len(row) != len(self.ys) for row in self.z):
            raise ConfigError(
                f"decode grid shape mismatch: itl is {len(self.z)}x{len(self.z[0]) if self.z else 0}, "
                f"axes are {len(self.xs)} and {len(self.ys)}"
            )
        for axis in (self.xs, self.ys):
            if any(b <= a for a, b in pairwise(axis)):
                raise ConfigError("decode grid axes must be strictly increasing")

    def __call__(self, x: float, y: float) -> float:
        xs, ys, z = self.xs, self.ys, self.z
        i = _segment(xs, x)
        j = _segment(ys, y)
        tx = (x - xs[i]) / (xs[i + 1] - xs[i])
        ty = (y - ys[j]) / (ys[j + 1] - ys[j])
        z0 = z[i][j] + (z[i + 1][j] - z[i][j]) * tx
        z1 = z[i][j + 1] + (z[i + 1][j + 1] - z[i][j + 1]) * tx
        return z0 + (z1 - z0) * ty


class InterpolatedPerfModel:
    """Timing interpolated from profiling data (``--planner-profile-data``)."""

    def __init__(self, prefill: Interp1D, decode: Interp2D) -> None:
        self.prefill = prefill
        self.decode = decode

    def predict_prefill_ms(self, batch_count: int, mean_isl: int, mean_prefix: int) -> float:
        new_tokens = mean_isl - mean_prefix
        if batch_count <= 0 or new_tokens <= 0:
            return 0.0
        ms = self.prefill(float(batch_count * new_tokens))
        return ms if ms > 0.0 else 0.0

    def predict_decode_ms(
        self, batch_size: int, active_kv_tokens: int, context_length: int, total_kv_tokens: int
    ) -> float:
        if batch_size <= 0:
            return 0.0
        ms = self.decode(float(active_kv_tokens), float(context_length))
        return ms if ms > 1.0 else 1.0

    # ---------------------------------------------------------------------------------------- loading

    @classmethod
    def from_arrays(
        cls,
        prefill_isl: Sequence[float],
        prefill_ttft_ms: Sequence[float],
        decode_active_kv_tokens: Sequence[float],
        decode_context_length: Sequence[float],
        decode_itl: Sequence[Sequence[float]],
    ) -> InterpolatedPerfModel:
        return cls(
            Interp1D(prefill_isl, prefill_ttft_ms),
            Interp2D(decode_active_kv_tokens, decode_context_length, decode_itl),
        )

    @classmethod
    def from_npz(cls, path: str | Path) -> InterpolatedPerfModel:
        """Load a mocker-format NPZ (the five :data:`MOCKER_NPZ_KEYS`)."""
        with np.load(path) as data:
            missing = [k for k in MOCKER_NPZ_KEYS if k not in data.files]
            if missing:
                raise ConfigError(f"{path}: not a mocker perf NPZ, missing keys {missing}")
            arrays = {k: np.asarray(data[k], dtype=float) for k in MOCKER_NPZ_KEYS}
        if arrays["decode_itl"].ndim != 2:
            raise ConfigError(f"{path}: decode_itl must be 2-D, got shape {arrays['decode_itl'].shape}")
        return cls.from_arrays(
            arrays["prefill_isl"].ravel().tolist(),
            arrays["prefill_ttft_ms"].ravel().tolist(),
            arrays["decode_active_kv_tokens"].ravel().tolist(),
            arrays["decode_context_length"].ravel().tolist(),
            arrays["decode_itl"].tolist(),
        )

    @classmethod
    def from_profile_samples(
        cls,
        prefill_isl: Sequence[float],
        prefill_ttft_ms: Sequence[float],
        kv_usage: Sequence[float],
        context_length: Sequence[float],
        itl_ms: Sequence[float],
        max_kv_tokens: float,
        resolution: int = DEFAULT_GRID_RESOLUTION,
    ) -> InterpolatedPerfModel:
        """Build the model from raw profiler samples (scattered decode points, like the converter)."""
        kv_axis, ctx_axis, grid = _grid_decode_samples(
            np.asarray(kv_usage, dtype=float) * float(max_kv_tokens),
            np.asarray(context_length, dtype=float),
            np.asarray(itl_ms, dtype=float),
            resolution,
        )
        return cls.from_arrays(prefill_isl, prefill_ttft_ms, kv_axis, ctx_axis, grid)

    @classmethod
    def from_profile_dir(cls, path: str | Path, row: int = 0) -> InterpolatedPerfModel:
        """Load a profiler results directory or a planner pre-swept directory."""
        root = Path(path)
        pre_npz = root / "selected_prefill_interpolation" / "raw_data.npz"
        dec_npz = root / "selected_decode_interpolation" / "raw_data.npz"
        if pre_npz.is_file() and dec_npz.is_file():
            pre = _load_npz(pre_npz)
            dec = _load_npz(dec_npz)
        elif (root / "prefill_raw_data.json").is_file() and (root / "decode_raw_data.json").is_file():
            pre = _load_json(root / "prefill_raw_data.json")
            dec = _load_json(root / "decode_raw_data.json")
        elif (root / "prefill.npz").is_file() and (root / "decode.npz").is_file():
            # Pre-swept results hold one row per parallel config; pick one.
            pre = {k: _row(v, row) for k, v in _load_npz(root / "prefill.npz").items()}
            dec = {k: _row(v, row) for k, v in _load_npz(root / "decode.npz").items()}
        else:
            raise ConfigError(
                f"{root}: expected selected_prefill_interpolation/raw_data.npz + "
                "selected_decode_interpolation/raw_data.npz, prefill_raw_data.json + decode_raw_data.json, "
                "or prefill.npz + decode.npz"
            )
        try:
            ttft = pre["prefill_ttft_ms"] if "prefill_ttft_ms" in pre else pre["prefill_ttft"]
            return cls.from_profile_samples(
                pre["prefill_isl"],
                ttft,
                dec["x_kv_usage"],
                dec["y_context_length"],
                dec["z_itl"],
                float(np.asarray(dec["max_kv_tokens"]).ravel()[0]),
            )
        except KeyError as exc:
            raise ConfigError(f"{root}: profiling data lacks key {exc}") from exc


def load_perf_model(planner_profile_data: str | Path | None) -> PerfModel:
    """The model selected by ``--planner-profile-data`` (polynomial when unset)."""
    if planner_profile_data is None or str(planner_profile_data) == "":
        return PolynomialPerfModel()
    path = Path(planner_profile_data)
    if path.is_file():
        return InterpolatedPerfModel.from_npz(path)
    if path.is_dir():
        return InterpolatedPerfModel.from_profile_dir(path)
    raise ConfigError(f"--planner-profile-data {path}: no such file or directory")


def scaled_pass_ms(prefill_ms: float, decode_ms: float, speedup_ratio: float, decode_speedup_ratio: float) -> float:
    """Wall-clock length of a pass: both parts divided by ``speedup_ratio``, decode also by
    ``decode_speedup_ratio``."""
    return prefill_ms / speedup_ratio + decode_ms / (speedup_ratio * decode_speedup_ratio)


def kv_transfer_delay_ms(num_input_tokens: int, kv_bytes_per_token: int | None, bandwidth_gb_s: float) -> float | None:
    """Prefill→decode KV handoff delay ``isl × bytes_per_token / (GB/s)``; None when disabled."""
    if kv_bytes_per_token is None or bandwidth_gb_s <= 0:
        return None
    return num_input_tokens * kv_bytes_per_token / (bandwidth_gb_s * 1e9) * 1000.0


_DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2}


def kv_bytes_per_token(hf_config: dict[str, Any], kv_cache_dtype: str = "auto") -> int | None:
    """``layers × 2 (K and V) × kv_heads × head_dim × dtype bytes`` from a Hugging Face ``config.json``;
    None when the config lacks the sizes. ``kv_cache_dtype`` ``auto`` uses the model's dtype."""
    cfg = hf_config.get("text_config", hf_config) if isinstance(hf_config.get("text_config"), dict) else hf_config
    layers = cfg.get("num_hidden_layers")
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if cfg.get("hidden_size") and heads else None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, head_dim)):
        return None
    dtype = kv_cache_dtype.lower()
    if dtype == "auto":
        dtype = str(cfg.get("torch_dtype") or hf_config.get("torch_dtype") or "bfloat16").lower()
    size = 1 if dtype.startswith("fp8") or dtype.startswith("int8") else _DTYPE_BYTES.get(dtype, 2)
    return int(layers * 2 * kv_heads * head_dim * size)


# --------------------------------------------------------------------------------------------- helpers


def _load_npz(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def _load_json(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return {k: np.asarray(v) for k, v in obj.items()}


def _row(value: Any, row: int) -> Any:
    arr = np.asarray(value)
    if arr.ndim >= 2:
        if row >= arr.shape[0]:
            raise ConfigError(f"pre-swept data has {arr.shape[0]} configs, row {row} requested")
        return arr[row]
    return arr


def _grid_decode_samples(
    kv_tokens: np.ndarray, ctx: np.ndarray, itl: np.ndarray, resolution: int
) -> tuple[list[float], list[float], list[list[float]]]:
    """Resample scattered ``(active_kv_tokens, context_length) -> itl`` points onto a grid.

    Profilers sweep the KV load at a handful of fixed context lengths; when that is the shape of the
    data, each context line is interpolated linearly along the KV axis (exact on the samples). Anything
    else falls back to inverse-distance weighting in normalised coordinates.
    """
    if not (kv_tokens.shape == ctx.shape == itl.shape) or kv_tokens.size < 2:
        raise ConfigError("decode profiling samples must be equally long arrays with at least two points")
    kv_axis = np.linspace(0.0, float(kv_tokens.max()), resolution)
    contexts = np.unique(ctx)
    lines_ok = contexts.size >= 2 and all(np.unique(kv_tokens[ctx == c]).size >= 2 for c in contexts)
    if lines_ok:
        columns = []
        for c in contexts:
            mask = ctx == c
            line = Interp1D(kv_tokens[mask].tolist(), itl[mask].tolist())
            columns.append([line(float(x)) for x in kv_axis])
        grid = np.asarray(columns).T  # rows: kv, cols: context
        return kv_axis.tolist(), contexts.astype(float).tolist(), grid.tolist()
    ctx_axis = np.linspace(float(ctx.min()), float(ctx.max()), resolution)
    if ctx_axis[0] == ctx_axis[-1]:
        ctx_axis = np.array([ctx_axis[0], ctx_axis[0] + 1.0])
    kv_scale = float(np.ptp(kv_tokens)) or 1.0
    ctx_scale = float(np.ptp(ctx)) or 1.0
    gx, gy = np.meshgrid(kv_axis / kv_scale, ctx_axis / ctx_scale, indexing="ij")
    d2 = (gx[..., None] - kv_tokens / kv_scale) ** 2 + (gy[..., None] - ctx / ctx_scale) ** 2
    weights = 1.0 / np.maximum(d2, 1e-12)
    grid = (weights * itl).sum(axis=-1) / weights.sum(axis=-1)
    return kv_axis.tolist(), ctx_axis.tolist(), grid.tolist()
