"""Engine arguments of the mocker (reference §3.6) — the dataclass behind the CLI and ``--extra-engine-args``.

Field names are the JSON keys accepted by ``--extra-engine-args`` (upstream ``MockEngineArgs``); the
process-level flags (model path/name, endpoint, ``--num-workers``, stagger, planes, per-worker port
lists) belong to the CLI, not here. Defaults follow the reference: 16384 GPU blocks, block size 64,
256 sequences, 8192 batched tokens, prefix caching and chunked prefill on, LIFO preemption, speedups 1.0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamo.runtime.errors import ConfigError

WORKER_TYPES = ("aggregated", "prefill", "decode")
PREEMPTION_MODES = ("lifo", "fifo")
ENGINE_TYPES = ("vllm", "sglang")
#: ``--disaggregation-mode`` spellings -> worker type
_DISAGG_MODES = {"agg": "aggregated", "aggregated": "aggregated", "prefill": "prefill", "decode": "decode"}


@dataclass(frozen=True)
class ReasoningConfig:
    """``--reasoning``: wrap the first ``thinking_ratio × max_tokens`` output tokens in thinking markers."""

    start_thinking_token_id: int
    end_thinking_token_id: int
    thinking_ratio: float

    def num_thinking_tokens(self, max_tokens: int) -> int:
        """Length of the thinking block including both markers: 0 (off) or within ``[2, max_tokens]``."""
        if max_tokens < 2:
            return 0
        raw = math.floor(max_tokens * self.thinking_ratio)
        if raw == 0:
            return 0
        return min(max(raw, 2), max_tokens)

    @classmethod
    def from_obj(cls, obj: Any) -> ReasoningConfig:
        """Parse the ``--reasoning`` JSON (string or already-decoded object)."""
        if isinstance(obj, ReasoningConfig):
            return obj
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--reasoning is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ConfigError("--reasoning must be a JSON object")
        keys = ("start_thinking_token_id", "end_thinking_token_id", "thinking_ratio")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise ConfigError(f"--reasoning is missing {', '.join(missing)}")
        unknown = sorted(set(obj) - set(keys))
        if unknown:
            raise ConfigError(f"--reasoning has unknown keys {unknown}")
        try:
            return cls(int(obj["start_thinking_token_id"]), int(obj["end_thinking_token_id"]),
                       float(obj["thinking_ratio"]))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--reasoning has a badly typed value: {exc}") from exc


@dataclass
class MockEngineArgs:
    """Everything one mocker engine (all its dp ranks) needs to simulate a vLLM-style worker."""

    #: KV cache capacity in blocks, per dp rank (``--num-gpu-blocks-override``)
    num_gpu_blocks: int = 16384
    #: tokens per KV block (``--block-size``; vLLM engine type default 64)
    block_size: int = 64
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    #: ``lifo`` preempts the newest running request, ``fifo`` the oldest
    preemption_mode: str = "lifo"
    #: admission headroom: a fresh request is admitted only if the KV cache stays below
    #: ``(1 - watermark) × num_gpu_blocks`` once its uncached blocks are allocated. Upstream's 2025
    #: scheduler used 0.01; the current one has no watermark, which is the default here.
    watermark: float = 0.0
    speedup_ratio: float = 1.0
    #: extra speedup applied to decode time only
    decode_speedup_ratio: float = 1.0
    #: data-parallel ranks simulated by this engine, each with its own scheduler and KV cache
    dp_size: int = 1
    #: simulated engine start-up delay in seconds (None = start at once)
    startup_time: float | None = None
    #: NPZ file or profiler results directory for the interpolated timing model (None = polynomial)
    planner_profile_data: str | None = None
    #: ``aggregated`` | ``prefill`` | ``decode`` (``--disaggregation-mode agg|prefill|decode``)
    worker_type: str = "aggregated"
    engine_type: str = "vllm"
    reasoning: ReasoningConfig | None = None
    #: prompt + output cap; None = unbounded (limited only by the KV cache)
    max_model_len: int | None = None
    #: prefill→decode KV transfer bandwidth in GB/s; 0 disables the handoff delay
    kv_transfer_bandwidth: float = 64.0
    kv_cache_dtype: str = "auto"
    #: bytes of KV per token; None = derive from the model's HF config (done by the CLI)
    kv_bytes_per_token: int | None = None
    durable_kv_events: bool = False
    #: per-worker ports (the CLI spreads ``--bootstrap-ports`` etc. over workers)
    bootstrap_port: int | None = None
    zmq_kv_events_port: int | None = None
    zmq_replay_port: int | None = None
    #: SGLang-style scheduler knobs (``--engine-type sglang``; not simulated by this implementation)
    sglang_page_size: int = 1
    sglang_max_prefill_tokens: int = 16384
    sglang_chunked_prefill_size: int = 8192
    sglang_clip_max_new_tokens: int = 4096
    sglang_schedule_conservativeness: float = 1.0
    sglang_schedule_policy: str = "fifo"
    #: seed of the output-token RNG (None = nondeterministic)
    seed: int | None = None
    #: keys explicitly set through :meth:`from_dict` / :meth:`from_json` (for CLI precedence)
    explicitly_set: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # ------------------------------------------------------------------------------------ properties

    @property
    def is_prefill(self) -> bool:
        return self.worker_type == "prefill"

    @property
    def is_decode(self) -> bool:
        return self.worker_type == "decode"

    @property
    def total_kv_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    # ---------------------------------------------------------------------------------------- parsing

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "explicitly_set")

    @classmethod
    def from_dict(cls, obj: dict[str, Any], base: MockEngineArgs | None = None) -> MockEngineArgs:
        """``base`` (or the defaults) overridden by ``obj``; legacy keys are translated. Validated."""
        if not isinstance(obj, dict):
            raise ConfigError("mocker engine args must be a JSON object")
        updates: dict[str, Any] = {}
        names = set(cls.field_names())
        unknown: list[str] = []
        for key, value in obj.items():
            if key == "is_prefill" or key == "is_prefill_worker":
                if value:
                    updates["worker_type"] = "prefill"
            elif key == "is_decode" or key == "is_decode_worker":
                if value:
                    updates["worker_type"] = "decode"
            elif key == "disaggregation_mode":
                mode = _DISAGG_MODES.get(str(value))
                if mode is None:
                    raise ConfigError(f"disaggregation_mode must be one of agg, prefill, decode; got {value!r}")
                updates["worker_type"] = mode
            elif key in ("num_gpu_blocks_override",):
                updates["num_gpu_blocks"] = value
            elif key in ("data_parallel_size",):
                updates["dp_size"] = value
            elif key == "reasoning":
                updates["reasoning"] = None if value is None else ReasoningConfig.from_obj(value)
            elif key in names:
                updates[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(
                f"unknown mocker engine args {sorted(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        start = base if base is not None else cls()
        args = dataclasses.replace(start, **updates)
        args.explicitly_set = frozenset(start.explicitly_set | set(updates))
        args.validate()
        return args

    @classmethod
    def from_json(cls, path: str | Path, base: MockEngineArgs | None = None) -> MockEngineArgs:
        """Read ``--extra-engine-args``: a JSON object whose keys override ``base`` (the CLI values)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"--extra-engine-args {p}: {exc.strerror or exc}") from exc
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--extra-engine-args {p}: invalid JSON: {exc}") from exc
        return cls.from_dict(obj, base)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.field_names()}
        if self.reasoning is not None:
            out["reasoning"] = dataclasses.asdict(self.reasoning)
        return out

    # ------------------------------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        _int("num_gpu_blocks", self.num_gpu_blocks, minimum=1)
        _int("block_size", self.block_size, minimum=1)
        _int("max_num_seqs", self.max_num_seqs, minimum=1)
        _int("max_num_batched_tokens", self.max_num_batched_tokens, minimum=1)
        _int("dp_size", self.dp_size, minimum=1)
        _bool("enable_prefix_caching", self.enable_prefix_caching)
        _bool("enable_chunked_prefill", self.enable_chunked_prefill)
        _bool("durable_kv_events", self.durable_kv_events)
        _number("speedup_ratio", self.speedup_ratio, positive=True)
        _number("decode_speedup_ratio", self.decode_speedup_ratio, positive=True)
        _number("watermark", self.watermark)
        if not 0.0 <= self.watermark < 1.0:
            raise ConfigError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"preemption_mode must be 'lifo' or 'fifo', got {self.preemption_mode!r}")
        if self.worker_type not in WORKER_TYPES:
            raise ConfigError(f"worker_type must be one of {', '.join(WORKER_TYPES)}; got {self.worker_type!r}")
        if self.engine_type not in ENGINE_TYPES:
            raise ConfigError(f"engine_type must be 'vllm' or 'sglang', got {self.engine_type!r}")
        if self.engine_type == "sglang":
            raise ConfigError("engine_type 'sglang' is not implemented by this mocker; use 'vllm'")
        if self.startup_time is not None:
            _number("startup_time", self.startup_time)
            if self.startup_time < 0:
                raise ConfigError(f"startup_time must be >= 0, got {self.startup_time}")
        if self.max_model_len is not None:
            _int("max_model_len", self.max_model_len, minimum=1)
        _number("kv_transfer_bandwidth", self.kv_transfer_bandwidth)
        if self.kv_transfer_bandwidth < 0:
            raise ConfigError(f"kv_transfer_bandwidth must be >= 0 GB/s, got {self.kv_transfer_bandwidth}")
        if self.kv_bytes_per_token is not None:
            _int("kv_bytes_per_token", self.kv_bytes_per_token, minimum=1)
        if not isinstance(self.kv_cache_dtype, str) or not self.kv_cache_dtype:
            raise ConfigError("kv_cache_dtype must be a non-empty string")
        for name in ("bootstrap_port", "zmq_kv_events_port", "zmq_replay_port"):
            value = getattr(self, name)
            if value is not None:
                _int(name, value, minimum=0)
                if value > 65535:
                    raise ConfigError(f"{name} must be a TCP port (0-65535), got {value}")
        if self.planner_profile_data is not None:
            if not isinstance(self.planner_profile_data, str | Path):
                raise ConfigError("planner_profile_data must be a path")
            if not Path(self.planner_profile_data).exists():
                raise ConfigError(f"planner_profile_data {self.planner_profile_data}: no such file or directory")
        if self.reasoning is not None:
            r = self.reasoning
            if not 0.0 <= r.thinking_ratio <= 1.0:
                raise ConfigError(f"reasoning.thinking_ratio must be in [0, 1], got {r.thinking_ratio}")
            for name in ("start_thinking_token_id", "end_thinking_token_id"):
                if getattr(r, name) < 0:
                    raise ConfigError(f"reasoning.{name} must be >= 0")
        if self.seed is not None:
            _int("seed", self.seed, minimum=0)


def _int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
