"""Mooncake FAST'25 traces (``shared/data/traces/mooncake``): loading, subsetting, and offline figures.

Each JSONL line is one request: ``timestamp`` (ms since the trace start), ``input_length`` and
``output_length`` (tokens) and ``hash_ids``: one id per 512-token block of the prompt, remapped so that
equal ids at equal positions mean a reusable prefix (the ids already encode the whole prefix, like
chained sequence hashes). In the conversation trace every prompt starts with id 0 (a shared system
prompt) and ``hash_ids[:2]`` identifies a conversation: later turns repeat the earlier turns' ids.

Named ``traces`` (not ``trace``) so it cannot shadow the standard library's ``trace`` module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

TRACE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "traces" / "mooncake"
TRACE_FILES = {"conversation": "conversation_trace.jsonl", "synthetic": "synthetic_trace.jsonl"}
TRACE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` entry in the Mooncake traces."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    @property
    def conversation(self) -> tuple[int, ...]:
        """Turns of one conversation share their first two ids (the first is the shared system prompt)."""
        return self.hash_ids[:2]


def trace_path(name: str) -> Path:
    """A named trace (``conversation``, ``synthetic``) or a path to a JSONL file in the same format."""
    return TRACE_DIR / TRACE_FILES[name] if name in TRACE_FILES else Path(name)


def load_trace(name: str, limit: int | None = None) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with trace_path(name).open() as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            out.append(TraceRequest(int(r["timestamp"]), int(r["input_length"]), int(r["output_length"]),
                                    tuple(r["hash_ids"])))
    return out


def sample_conversations(requests: list[TraceRequest], target: int, seed: int = 0) -> list[TraceRequest]:
    """Whole conversations, picked in a seeded pseudo-random order until ``target`` requests are reached,
    returned in arrival order.

    Keeping every turn of the chosen conversations (instead of taking the first N requests of the
    trace) preserves the reuse between turns, which is minutes apart in the trace: a short time window
    would hold mostly first turns.
    """
    groups: dict[tuple[int, ...], list[TraceRequest]] = {}
    for r in requests:
        groups.setdefault(r.conversation, []).append(r)
    order = sorted(groups, key=lambda k: xxhash.xxh3_64_intdigest(repr(k).encode(), seed=seed))
    chosen: list[TraceRequest] = []
    for key in order:
        if len(chosen) >= target:
            break
        chosen.extend(groups[key])
    chosen.sort(key=lambda r: r.timestamp_ms)
    return chosen


def seen_block_fraction(requests: list[TraceRequest]) -> float:
    """Fraction of all ``hash_ids`` entries that appeared in an earlier request."""
    seen: set[int] = set()
    hits = total = 0
    for r in requests:
        for h in r.hash_ids:
            total += 1
            hits += h in seen
        seen.update(r.hash_ids)
    return hits / total if total else float("nan")


def oracle_hit_rate(requests: list[TraceRequest], prompt_lengths: list[int], tokens_per_id: int,
                    block_size: int) -> float:
    """Prompt-token hit rate of one engine with an unlimited prefix cache, in the router's units.

    A request can reuse the leading run of its ids seen before (a prefix cache cannot skip a gap), and
    only whole KV blocks: that many tokens, floored to ``block_size``, capped at the full blocks of the
    prompt. ``prompt_lengths`` are the (scaled) prompt lengths actually sent.
    """
    seen: set[int] = set()
    cached = total = 0
    for r, n in zip(requests, prompt_lengths, strict=True):
        run = 0
        for h in r.hash_ids:
            if h not in seen:
                break
            run += 1
        cached += min(run * tokens_per_id, n) // block_size * block_size
        total += n
        seen.update(r.hash_ids)
    return cached / total if total else float("nan")
