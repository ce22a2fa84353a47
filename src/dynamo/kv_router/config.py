"""Knobs of the KV router (reference §2.10) with the reference defaults and their validation rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynamo.runtime.errors import ConfigError, InvalidArgument

QUEUE_POLICIES = ("fcfs", "lcfs", "wspt")
PREFILL_LOAD_MODELS = ("none", "aic")


@dataclass(slots=True)
class KvRouterConfig:
    overlap_score_weight: float = 1.0
    """Weight of prefill cost against decode load; 0 = pure load balancing (and no KV events)."""
    router_temperature: float = 0.0
    """0 = pick the cheapest worker; > 0 = softmax sampling over normalised costs."""
    use_kv_events: bool = True
    """False = approximate mode (the router predicts caches from its own decisions, with a TTL)."""
    durable_kv_events: bool = False
    """Deprecated JetStream transport for KV events; requires ``use_kv_events``."""
    router_replica_sync: bool = False
    router_track_active_blocks: bool = True
    router_track_output_blocks: bool = False
    """Requires ``router_track_active_blocks``."""
    router_assume_kv_reuse: bool = True
    router_track_prefill_tokens: bool = True
    router_prefill_load_model: str = "none"
    """``none`` or ``aic`` (which needs prefill-token tracking and the fcfs queue policy)."""
    router_snapshot_threshold: int = 1_000_000
    router_reset_states: bool = False
    router_ttl_secs: float = 120.0
    router_max_tree_size: int = 1 << 20
    router_prune_target_ratio: float = 0.8
    router_queue_threshold: float | None = 4.0
    """Park requests while every worker's prefill load exceeds this × ``max_num_batched_tokens``."""
    router_queue_max_size: int = 1024
    """Parked requests beyond this many are refused at once (HTTP 503)."""
    router_queue_timeout_secs: float = 60.0
    """A parked request still waiting after this long is refused (HTTP 503)."""
    router_event_threads: int = 4
    router_queue_policy: str = "fcfs"
    use_remote_indexer: bool = False
    serve_indexer: bool = False
    router_min_initial_workers: int = 0

    def validate(self) -> KvRouterConfig:
        """Raise :class:`ConfigError` on an invalid value or combination; returns self for chaining."""
        errors: list[str] = []
        if not self.overlap_score_weight >= 0.0:
            errors.append("overlap_score_weight must be >= 0")
        if not self.router_temperature >= 0.0:
            errors.append("router_temperature must be >= 0")
        if self.durable_kv_events and not self.use_kv_events:
            errors.append(
                "durable_kv_events requires use_kv_events (KV events cannot be durable when disabled)"
            )
        if self.router_track_output_blocks and not self.router_track_active_blocks:
            errors.append("router_track_output_blocks requires router_track_active_blocks")
        if self.router_prefill_load_model not in PREFILL_LOAD_MODELS:
            errors.append(f"router_prefill_load_model must be one of {', '.join(PREFILL_LOAD_MODELS)}")
        elif self.router_prefill_load_model == "aic":
            if not self.router_track_prefill_tokens:
                errors.append("router_prefill_load_model=aic requires router_track_prefill_tokens")
            if self.router_queue_policy != "fcfs":
                errors.append("router_prefill_load_model=aic requires router_queue_policy=fcfs")
        if self.router_queue_policy not in QUEUE_POLICIES:
            errors.append(f"router_queue_policy must be one of {', '.join(QUEUE_POLICIES)}")
        if self.router_snapshot_threshold < 1:
            errors.append("router_snapshot_threshold must be >= 1")
        if not self.router_ttl_secs > 0.0:
            errors.append("router_ttl_secs must be > 0")
        if self.router_max_tree_size < 1:
            errors.append("router_max_tree_size must be >= 1")
        if not 0.0 <= self.router_prune_target_ratio <= 1.0:
            errors.append("router_prune_target_ratio must be in [0, 1]")
        if self.router_queue_threshold is not None and not self.router_queue_threshold >= 0.0:
            errors.append("router_queue_threshold must be >= 0 (or None to disable the queue)")
        if self.router_queue_max_size < 1:
            errors.append("router_queue_max_size must be >= 1")
        if not self.router_queue_timeout_secs > 0.0:
            errors.append("router_queue_timeout_secs must be > 0")
        if self.router_event_threads < 1:
            errors.append("router_event_threads must be >= 1")
        if self.use_remote_indexer and self.serve_indexer:
            errors.append("use_remote_indexer and serve_indexer are mutually exclusive")
        if self.serve_indexer and not self.overlap_score_weight > 0.0:
            errors.append("serve_indexer requires overlap_score_weight > 0")
        if self.router_min_initial_workers < 0:
            errors.append("router_min_initial_workers must be >= 0")
        if errors:
            raise ConfigError("invalid KV router config: " + "; ".join(errors))
        return self

    @property
    def should_subscribe_to_kv_events(self) -> bool:
        """Weight 0 means overlap is ignored, so there is no point in ingesting KV events."""
        return self.use_kv_events and self.overlap_score_weight > 0.0

    @property
    def effective_event_threads(self) -> int:
        """Approximate mode always uses the single-threaded tree (it needs TTL/pruning)."""
        return self.router_event_threads if self.use_kv_events else 1

    def with_override(self, override: RouterConfigOverride | Mapping[str, Any] | None) -> KvRouterConfig:
        """A copy with a request's ``router_config_override`` applied (None fields keep the default)."""
        if override is None:
            return self
        if isinstance(override, Mapping):
            override = RouterConfigOverride.from_mapping(override)
        changes: dict[str, Any] = {}
        if override.overlap_score_weight is not None:
            changes["overlap_score_weight"] = override.overlap_score_weight
        if override.router_temperature is not None:
            changes["router_temperature"] = override.router_temperature
        if override.assume_kv_reuse is not None:
            changes["router_assume_kv_reuse"] = override.assume_kv_reuse
        if override.track_prefill_tokens is not None:
            changes["router_track_prefill_tokens"] = override.track_prefill_tokens
        return dataclasses.replace(self, **changes) if changes else self


@dataclass(slots=True, frozen=True)
class RouterConfigOverride:
    """Per-request ``router_config_override`` (disaggregated decode routing sets
    ``{overlap_score_weight: 0, assume_kv_reuse: false, track_prefill_tokens: false}``)."""

    overlap_score_weight: float | None = None
    router_temperature: float | None = None
    assume_kv_reuse: bool | None = None
    track_prefill_tokens: bool | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RouterConfigOverride:
        """Accepts short and ``router_``-prefixed names, ignores unknown keys; bad values → InvalidArgument."""

        def pick(*names: str) -> Any:
            for n in names:
                if data.get(n) is not None:
                    return data[n]
            return None

        weight = pick("overlap_score_weight")
        temp = pick("router_temperature", "temperature")
        reuse = pick("assume_kv_reuse", "router_assume_kv_reuse")
        track = pick("track_prefill_tokens", "router_track_prefill_tokens")
        try:
            out = cls(
                overlap_score_weight=None if weight is None else float(weight),
                router_temperature=None if temp is None else float(temp),
                assume_kv_reuse=None if reuse is None else bool(reuse),
                track_prefill_tokens=None if track is None else bool(track),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"invalid router_config_override: {exc}") from exc
        if out.overlap_score_weight is not None and not out.overlap_score_weight >= 0.0:
            raise InvalidArgument("router_config_override.overlap_score_weight must be >= 0")
        if out.router_temperature is not None and not out.router_temperature >= 0.0:
            raise InvalidArgument("router_config_override.router_temperature must be >= 0")
        return out
