"""Conditional disaggregation (reference §5): when a remote prefill would not pay, prefill on the decode
worker instead.

Remote prefill costs a KV transfer and a second scheduling hop; it pays for long, uncached prompts and
loses for prompts the decode worker mostly holds already, or when the prefill pool is saturated.
Policies, over what the routers would choose right now:

- ``isl_bounding``: prefill locally iff the effective ISL (prompt minus the blocks the chosen decode
  worker already caches) is below ``eff_isl_threshold`` **and** below ``eff_isl_ratio_threshold`` of
  the prompt.
- ``prefill_load``: prefill locally iff the chosen prefill worker's active prefill tokens exceed
  ``prefill_busy_threshold × max_num_batched_tokens``.
- ``isl_or_load``: either.

The optional decode guard vetoes a local prefill when the chosen decode worker's projected decode
blocks would exceed ``decode_busy_threshold × total_kv_blocks``. Pure logic: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo.runtime.errors import ConfigError

POLICIES = ("isl_bounding", "prefill_load", "isl_or_load")


@dataclass(slots=True)
class ConditionalDisaggConfig:
    enabled: bool = False
    policy: str = "isl_bounding"
    eff_isl_threshold: int = 2048
    eff_isl_ratio_threshold: float = 0.7
    #: × max_num_batched_tokens; None = no load bypass (the frontend defaults it to the queue threshold)
    prefill_busy_threshold: float | None = None
    #: × total_kv_blocks; None = decode guard off
    decode_busy_threshold: float | None = None

    def validate(self) -> ConditionalDisaggConfig:
        if self.policy not in POLICIES:
            raise ConfigError(f"--router-conditional-disagg-policy must be one of {', '.join(POLICIES)}; "
                              f"got {self.policy!r}")
        if self.eff_isl_threshold < 0:
            raise ConfigError("--router-conditional-disagg-eff-isl-threshold must be >= 0")
        if not 0.0 <= self.eff_isl_ratio_threshold <= 1.0:
            raise ConfigError("--router-conditional-disagg-eff-isl-ratio-threshold must be in [0, 1]")
        for flag, value in (("prefill", self.prefill_busy_threshold), ("decode", self.decode_busy_threshold)):
            if value is not None and not value > 0:
                raise ConfigError(f"--router-conditional-disagg-{flag}-busy-threshold must be > 0")
        return self


@dataclass(slots=True)
class DisaggView:
    """What the routers would do with one request right now."""

    prompt_tokens: int
    block_size: int
    #: prefix blocks the chosen decode worker already caches
    decode_overlap_blocks: int = 0
    #: the prefill worker the prefill router would pick: its active prefill tokens and token budget
    prefill_active_tokens: int | None = None
    prefill_max_batched_tokens: int | None = None
    #: the chosen decode worker: decode blocks once this request is on it, and its capacity
    decode_projected_blocks: int | None = None
    decode_total_blocks: int | None = None


def prefill_locally(cfg: ConditionalDisaggConfig, view: DisaggView) -> tuple[bool, str]:
    """``(True, why)`` to prefill on the decode worker, ``(False, why)`` to prefill remotely."""
    prompt = view.prompt_tokens
    eff_isl = max(prompt - view.decode_overlap_blocks * view.block_size, 0)
    ratio = eff_isl / max(prompt, 1)
    short = eff_isl < cfg.eff_isl_threshold and ratio < cfg.eff_isl_ratio_threshold
    isl_reason = (f"effective ISL {eff_isl} of {prompt} tokens ({ratio:.2f}) on the decode worker "
                  f"{'<' if short else 'not <'} {cfg.eff_isl_threshold} and {cfg.eff_isl_ratio_threshold:g}")
    busy = False
    load_reason = "prefill load unknown"
    if (cfg.prefill_busy_threshold is not None and view.prefill_active_tokens is not None
            and view.prefill_max_batched_tokens):
        limit = cfg.prefill_busy_threshold * view.prefill_max_batched_tokens
        busy = view.prefill_active_tokens > limit
        load_reason = (f"prefill worker {'busy' if busy else 'not busy'}: {view.prefill_active_tokens} active "
                       f"tokens vs {limit:g}")
    if cfg.policy == "isl_bounding":
        local, reason = short, isl_reason
    elif cfg.policy == "prefill_load":
        local, reason = busy, load_reason
    else:
        local = short or busy
        reason = isl_reason if short or not busy else load_reason
    if local and cfg.decode_busy_threshold is not None and view.decode_projected_blocks is not None \
            and view.decode_total_blocks:
        limit = cfg.decode_busy_threshold * view.decode_total_blocks
        if view.decode_projected_blocks > limit:
            return False, (f"decode guard: the decode worker would hold {view.decode_projected_blocks} blocks "
                           f"> {limit:g}; {reason}")
    return local, reason
