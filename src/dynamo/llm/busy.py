"""Busy detection (reference §2.11): which workers should get no new requests right now.

Per dp rank, busy if any of: active prefill tokens above the absolute threshold; above ``frac ×
max_num_batched_tokens``; or the decode latch is set. The latch sets when either the router's view of
active decode blocks or the worker's own ``kv_used_blocks`` exceeds ``threshold × total_kv_blocks``,
and clears only once both latest signals are at or below it (hysteresis, so a worker hovering at the
limit does not flap). A worker is busy only when all of its dp ranks are. Pure logic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_BATCHED_TOKENS = 10_000_000


@dataclass
class BusyThresholds:
    active_decode_blocks_threshold: float | None = 1.0
    active_prefill_tokens_threshold: int | None = 10_000_000
    active_prefill_tokens_threshold_frac: float | None = 10.0

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "active_decode_blocks_threshold": self.active_decode_blocks_threshold,
            "active_prefill_tokens_threshold": self.active_prefill_tokens_threshold,
            "active_prefill_tokens_threshold_frac": self.active_prefill_tokens_threshold_frac,
        }


@dataclass
class _RankState:
    kv_used_blocks: int | None = None
    active_decode_blocks: int | None = None
    active_prefill_tokens: int = 0
    latched: bool = False


@dataclass
class _WorkerState:
    total_kv_blocks: int | None
    max_num_batched_tokens: int | None
    dp_size: int
    ranks: dict[int, _RankState] = field(default_factory=dict)


class BusyMonitor:
    """Tracks load reports for one model's workers; ``busy_workers()`` is the set to route around."""

    def __init__(self, thresholds: BusyThresholds | None = None) -> None:
        self.thresholds = thresholds or BusyThresholds()
        self._workers: dict[int, _WorkerState] = {}
        self._busy: set[int] = set()

    def add_worker(self, worker_id: int, total_kv_blocks: int | None, max_num_batched_tokens: int | None,
                   dp_size: int = 1) -> None:
        if worker_id not in self._workers:
            self._workers[worker_id] = _WorkerState(total_kv_blocks, max_num_batched_tokens, max(dp_size, 1))

    def remove_worker(self, worker_id: int) -> None:
        self._workers.pop(worker_id, None)
        self._busy.discard(worker_id)

    def retain(self, worker_ids: set[int]) -> None:
        """Forget every worker not in ``worker_ids`` (the set's live instances)."""
        for wid in [w for w in self._workers if w not in worker_ids]:
            self.remove_worker(wid)

    def update(self, worker_id: int, dp_rank: int = 0, *, kv_used_blocks: int | None = None,
               active_decode_blocks: int | None = None, active_prefill_tokens: int | None = None) -> bool:
        """Apply one load report; returns whether the worker's busy state changed."""
        w = self._workers.get(worker_id)
        if w is None:
            return False
        r = w.ranks.setdefault(dp_rank, _RankState())
        if kv_used_blocks is not None:
            r.kv_used_blocks = kv_used_blocks
        if active_decode_blocks is not None:
            r.active_decode_blocks = active_decode_blocks
        if active_prefill_tokens is not None:
            r.active_prefill_tokens = active_prefill_tokens
        self._update_latch(w, r)
        return self._refresh(worker_id, w)

    def set_thresholds(self, thresholds: BusyThresholds) -> None:
        self.thresholds = thresholds
        for wid, w in self._workers.items():
            for r in w.ranks.values():
                self._update_latch(w, r)
            self._refresh(wid, w)

    def busy_workers(self) -> set[int]:
        return self._busy

    def _update_latch(self, w: _WorkerState, r: _RankState) -> None:
        frac = self.thresholds.active_decode_blocks_threshold
        if frac is None or not w.total_kv_blocks:
            r.latched = False
            return
        limit = frac * w.total_kv_blocks
        signals = [s for s in (r.active_decode_blocks, r.kv_used_blocks) if s is not None]
        if any(s > limit for s in signals):
            r.latched = True
        elif all(s <= limit for s in signals):
            r.latched = False

    def _rank_busy(self, w: _WorkerState, r: _RankState) -> bool:
        t = self.thresholds
        if t.active_prefill_tokens_threshold is not None and r.active_prefill_tokens > t.active_prefill_tokens_threshold:
            return True
        if t.active_prefill_tokens_threshold_frac is not None:
            cap = w.max_num_batched_tokens or DEFAULT_MAX_BATCHED_TOKENS
            if r.active_prefill_tokens > t.active_prefill_tokens_threshold_frac * cap:
                return True
        return r.latched

    def _refresh(self, worker_id: int, w: _WorkerState) -> bool:
        ranks = [w.ranks.get(i) for i in range(w.dp_size)]
        busy = all(r is not None and self._rank_busy(w, r) for r in ranks)
        was = worker_id in self._busy
        if busy and not was:
            self._busy.add(worker_id)
        elif not busy and was:
            self._busy.discard(worker_id)
        return busy != was
