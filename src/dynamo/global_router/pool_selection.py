"""The global router's configuration and pool choice: pure data and arithmetic, no I/O, no clock.

A pool set (prefill, decode or agg) has a grid: each axis (prompt length, TTFT target, ITL target)
is cut into ``resolution`` equal buckets between ``min`` and ``max``, and ``mapping`` names the pool
for every cell. A value picks its bucket as ``int((value - min) / step)`` (truncation toward zero)
clamped to ``[0, resolution - 1]``, so values outside the range land in the edge buckets. Then the
first priority override whose inclusive ``[min_priority, max_priority]`` holds the request's
priority replaces the grid's pool. With priority retry on, a failed pool is followed by the faster
pools (lower ``*_pool_priorities`` numbers), slowest first.

``parse_config`` turns the JSON document into a :class:`GlobalRouterConfig`; every rule it checks
fails with one :class:`~dynamo.runtime.errors.ConfigError` line naming the field and the rule.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamo.runtime.errors import ConfigError

logger = logging.getLogger(__name__)


class PoolKind(str, enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    AGG = "agg"


class Mode(str, enum.Enum):
    DISAGG = "disagg"
    AGG = "agg"


@dataclass(frozen=True)
class Axis:
    """One grid dimension. ``name`` is what the explanation calls the value (``isl``, ``ttft_ms``...)."""

    name: str
    lo: float
    hi: float
    resolution: int

    @property
    def step(self) -> float:
        return (self.hi - self.lo) / self.resolution

    @property
    def midpoint(self) -> float:
        return (self.lo + self.hi) / 2

    def bucket(self, value: float) -> int:
        # int() truncates toward zero: a value just below ``lo`` gives -0.x -> 0, as documented.
        return max(0, min(int((value - self.lo) / self.step), self.resolution - 1))


@dataclass(frozen=True)
class PriorityOverride:
    min_priority: int
    max_priority: int
    target_pool: int

    def matches(self, priority: int) -> bool:
        return self.min_priority <= priority <= self.max_priority


@dataclass(frozen=True)
class Choice:
    """What the grid decided for one request, kept for the routing explanation."""

    pool: int
    #: the grid cell, one bucket per axis
    cell: tuple[int, ...]
    #: the value used on each axis (after defaults), by axis name
    inputs: dict[str, float]
    #: the pool the grid named, before a priority override replaced it (None: no override)
    grid_pool: int | None = None


@dataclass(frozen=True)
class PoolGrid:
    axes: tuple[Axis, ...]
    #: nested lists, one level per axis, leaves are pool indices
    mapping: Any
    overrides: tuple[PriorityOverride, ...] = ()

    def choose(self, values: Sequence[float | None], priority: int | None = None) -> Choice:
        """The pool for one request. A ``None`` value stands for the axis midpoint."""
        cell: list[int] = []
        inputs: dict[str, float] = {}
        node = self.mapping
        for axis, value in zip(self.axes, values, strict=True):
            v = axis.midpoint if value is None else value
            inputs[axis.name] = v
            i = axis.bucket(v)
            cell.append(i)
            node = node[i]
        pool = int(node)
        if priority is not None:
            for rule in self.overrides:
                if rule.matches(priority):
                    return Choice(rule.target_pool, tuple(cell), inputs, grid_pool=pool)
        return Choice(pool, tuple(cell), inputs)


@dataclass(frozen=True)
class PoolSet:
    """The pools of one kind: their namespaces, speed ranks and selection grid."""

    kind: PoolKind
    namespaces: tuple[str, ...]
    #: lower is faster; defaults to the pool order (pool 0 fastest)
    priorities: tuple[int, ...]
    grid: PoolGrid

    def retry_order(self, selected: int, enabled: bool) -> list[int]:
        """``selected`` first, then every strictly faster pool, the slowest of them first (ties in pool order)."""
        if not enabled:
            return [selected]
        mine = self.priorities[selected]
        faster = sorted({p for p in self.priorities if p < mine}, reverse=True)
        order = [selected]
        for rank in faster:
            order.extend(i for i, p in enumerate(self.priorities) if p == rank)
        return order


@dataclass(frozen=True)
class GlobalRouterConfig:
    mode: Mode
    enable_priority_retry: bool
    pools: dict[PoolKind, PoolSet]

    def pool_set(self, kind: PoolKind) -> PoolSet:
        return self.pools[kind]


# -- parsing and validation ---------------------------------------------------------------------

#: the older key names the reference still accepts (with a deprecation warning)
_ALIASES = {"ttft_min_ms": "ttft_min", "ttft_max_ms": "ttft_max", "itl_min_ms": "itl_min", "itl_max_ms": "itl_max"}


def parse_config(data: Any) -> GlobalRouterConfig:
    """Validate a parsed JSON document; raises ConfigError (one line: field and rule) when it is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigError("config: must be a JSON object")
    mode_raw = data.get("mode", "disagg")
    try:
        mode = Mode(mode_raw)
    except ValueError:
        raise ConfigError(f"mode: must be 'disagg' or 'agg', got {mode_raw!r}") from None
    retry = data.get("enable_priority_retry", False)
    if not isinstance(retry, bool):
        raise ConfigError(f"enable_priority_retry: must be a boolean, got {retry!r}")
    if mode is Mode.DISAGG:
        pools = {
            PoolKind.PREFILL: _pool_set(data, PoolKind.PREFILL, mode,
                                        (("isl", "isl", False), ("ttft", "ttft_ms", True))),
            PoolKind.DECODE: _pool_set(data, PoolKind.DECODE, mode,
                                       (("context_length", "context_length", False), ("itl", "itl_ms", True))),
        }
    else:
        pools = {PoolKind.AGG: _pool_set(data, PoolKind.AGG, mode, None)}
    return GlobalRouterConfig(mode, retry, pools)


def _pool_set(data: Mapping[str, Any], kind: PoolKind, mode: Mode,
              axes_spec: tuple[tuple[str, str, bool], ...] | None) -> PoolSet:
    k = kind.value
    count_key, ns_key, prio_key = f"num_{k}_pools", f"{k}_pool_dynamo_namespaces", f"{k}_pool_priorities"
    strategy_key, mapping_key = f"{k}_pool_selection_strategy", f"{k}_pool_mapping"
    count = _required(data, count_key, mode)
    if not _is_int(count) or count <= 0:
        raise ConfigError(f"{count_key}: must be a positive integer, got {count!r}")
    namespaces = _required(data, ns_key, mode)
    if not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces):
        raise ConfigError(f"{ns_key}: must be a list of non-empty namespace names")
    if len(namespaces) != count:
        raise ConfigError(f"{ns_key}: has {len(namespaces)} entries, must match {count_key} ({count})")
    priorities = data.get(prio_key)
    if priorities is None:
        priorities = list(range(count))
    else:
        if not isinstance(priorities, list):
            raise ConfigError(f"{prio_key}: must be a list of integers")
        if len(priorities) != count:
            raise ConfigError(f"{prio_key}: has {len(priorities)} entries, must match {count_key} ({count})")
        for i, p in enumerate(priorities):
            if not _is_int(p):
                raise ConfigError(f"{prio_key}[{i}]: must be an integer, got {p!r}")
    strategy = _required(data, strategy_key, mode)
    if not isinstance(strategy, Mapping):
        raise ConfigError(f"{strategy_key}: must be a JSON object")
    if axes_spec is None:
        axes = _agg_axes(strategy, strategy_key)
    else:
        axes = tuple(_axis(strategy, strategy_key, prefix, name, ms) for prefix, name, ms in axes_spec)
    mapping = strategy.get(mapping_key)
    if mapping is None:
        raise ConfigError(f"{strategy_key}.{mapping_key}: required")
    _check_mapping(mapping, axes, f"{strategy_key}.{mapping_key}", count)
    overrides = _overrides(strategy.get("priority_overrides", []), f"{strategy_key}.priority_overrides", count)
    return PoolSet(kind, tuple(namespaces), tuple(priorities), PoolGrid(axes, mapping, overrides))


def _agg_axes(strategy: Mapping[str, Any], path: str) -> tuple[Axis, ...]:
    sla = (_axis(strategy, path, "ttft", "ttft_ms", True), _axis(strategy, path, "itl", "itl_ms", True))
    isl_keys = ("isl_min", "isl_max", "isl_resolution")
    present = [key for key in isl_keys if strategy.get(key) is not None]
    if not present:
        return sla
    if len(present) != len(isl_keys):
        missing = ", ".join(key for key in isl_keys if key not in present)
        raise ConfigError(f"{path}: isl_min, isl_max and isl_resolution must be set together (missing {missing})")
    return (_axis(strategy, path, "isl", "isl", False), *sla)


def _axis(strategy: Mapping[str, Any], path: str, prefix: str, name: str, in_ms: bool) -> Axis:
    res_key = f"{prefix}_resolution"
    lo_key, hi_key = (f"{prefix}_min_ms", f"{prefix}_max_ms") if in_ms else (f"{prefix}_min", f"{prefix}_max")
    resolution = strategy.get(res_key)
    if resolution is None:
        raise ConfigError(f"{path}.{res_key}: required")
    if not _is_int(resolution) or resolution <= 0:
        raise ConfigError(f"{path}.{res_key}: must be a positive integer, got {resolution!r}")
    lo = _aliased_number(strategy, path, lo_key)
    hi = _aliased_number(strategy, path, hi_key)
    if not lo < hi:
        raise ConfigError(f"{path}.{lo_key}: must be less than {hi_key} ({lo!r} >= {hi!r})")
    return Axis(name, lo, hi, resolution)


def _aliased_number(strategy: Mapping[str, Any], path: str, key: str) -> float:
    value = strategy.get(key)
    alias = _ALIASES.get(key)
    if value is None and alias is not None and strategy.get(alias) is not None:
        logger.warning("config key %s.%s is deprecated; use %s", path, alias, key)
        value = strategy[alias]
    if value is None:
        raise ConfigError(f"{path}.{key}: required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}.{key}: must be a number, got {value!r}")
    return value


def _check_mapping(node: Any, axes: tuple[Axis, ...], path: str, count: int) -> None:
    """``node`` must be nested lists of shape ``[axis0.resolution][axis1.resolution]...`` of pool indices."""
    axis = axes[0]
    if not isinstance(node, list) or len(node) != axis.resolution:
        size = len(node) if isinstance(node, list) else "no"
        raise ConfigError(f"{path}: has {size} entries, must match the {axis.name} resolution ({axis.resolution})")
    for i, child in enumerate(node):
        where = f"{path}[{i}]"
        if len(axes) > 1:
            _check_mapping(child, axes[1:], where, count)
        elif not _is_int(child) or not 0 <= child < count:
            raise ConfigError(f"{where}: must be a pool index from 0 to {count - 1}, got {child!r}")


def _overrides(raw: Any, path: str, count: int) -> tuple[PriorityOverride, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: must be a list of rules")
    rules = []
    for i, rule in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigError(f"{where}: must be an object with min_priority, max_priority, target_pool")
        for key in ("min_priority", "max_priority", "target_pool"):
            if not _is_int(rule.get(key)):
                raise ConfigError(f"{where}.{key}: must be an integer, got {rule.get(key)!r}")
        unknown = set(rule) - {"min_priority", "max_priority", "target_pool"}
        if unknown:
            raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        lo, hi, target = rule["min_priority"], rule["max_priority"], rule["target_pool"]
        if lo > hi:
            raise ConfigError(f"{where}.min_priority: must be <= max_priority ({lo} > {hi})")
        if not 0 <= target < count:
            raise ConfigError(f"{where}.target_pool: must be a pool index from 0 to {count - 1}, got {target}")
        rules.append(PriorityOverride(lo, hi, target))
    return tuple(rules)


def _required(data: Mapping[str, Any], key: str, mode: Mode) -> Any:
    value = data.get(key)
    if value is None:
        raise ConfigError(f"{key}: required in {mode.value} mode")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
