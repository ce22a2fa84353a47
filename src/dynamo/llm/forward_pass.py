"""Forward-pass metrics of an engine worker, summed over short windows (topic ``forward-pass-metrics``).

An engine iteration can last microseconds (the mocker at high speedups) or a few milliseconds (a real
engine); one event per iteration would cost more than the iteration. Reports are summed per dp rank
over ~100 ms windows and flushed early when the rank goes idle, so the last pass is never held back.
"""

from __future__ import annotations

from typing import Any

_SUMMED = ("scheduled_tokens", "prefill_ms", "decode_ms", "emitted_tokens", "preempted")


class ForwardPassWindow:
    WINDOW_SECS = 0.1

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self._acc: dict[int, dict[str, Any]] = {}

    def add(self, rank: int, now: float, *, num_running: int, num_waiting: int, kv_used_blocks: int,
            scheduled_tokens: int = 0, emitted_tokens: int = 0, prefill_ms: float = 0.0, decode_ms: float = 0.0,
            preempted: int = 0) -> dict[str, Any] | None:
        """Account one pass; returns the window's report when it closes, else None."""
        acc = self._acc.get(rank)
        if acc is None:
            acc = self._acc[rank] = {"start": now, "passes": 0, **dict.fromkeys(_SUMMED, 0)}
        acc["passes"] += 1
        acc["scheduled_tokens"] += scheduled_tokens
        acc["prefill_ms"] += prefill_ms
        acc["decode_ms"] += decode_ms
        acc["emitted_tokens"] += emitted_tokens
        acc["preempted"] += preempted
        idle = num_running == 0 and num_waiting == 0
        if now - acc["start"] < self.WINDOW_SECS and not idle:
            return None
        del self._acc[rank]
        report = {k: v for k, v in acc.items() if k != "start"}
        report.update(worker_id=self.worker_id, dp_rank=rank, window_s=round(now - acc["start"], 4),
                      num_running=num_running, num_waiting=num_waiting, kv_used_blocks=kv_used_blocks)
        return report
