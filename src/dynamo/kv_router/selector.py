"""Which ``(worker, dp_rank)`` gets a request: the KV router's cost function (reference §2.4).

For every candidate::

    prefill_blocks = potential_prefill_tokens / block_size        (a float: never rounded)
    logit          = overlap_score_weight * prefill_blocks + potential_decode_blocks

Lower is better. Temperature 0 picks the minimum (ties → smallest tree size → uniform random);
temperature T > 0 samples ``p_i ∝ exp(−logit_i / ((max − min)·T))`` (uniform when all logits are equal).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dynamo.kv_router.indexer import OverlapScores, WorkerKey
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker, LoadVectors
from dynamo.llm.protocols.model_card import RuntimeConfig
from dynamo.runtime.errors import Unavailable


@dataclass(slots=True, frozen=True)
class CandidateCost:
    """The cost terms of one candidate (what a debug header shows to explain a decision)."""

    worker_id: int
    dp_rank: int
    overlap_blocks: int
    prefill_tokens: float
    prefill_blocks: float
    decode_blocks: float
    logit: float
    tree_size: int


@dataclass(slots=True, frozen=True)
class Selection:
    """The routing decision: where to send the request and why."""

    worker_id: int
    dp_rank: int
    overlap_blocks: int
    required_blocks: int
    """``ceil(isl / block_size)``."""
    candidates: list[CandidateCost] = field(default_factory=list)
    """Best candidates first (at most ``top_k`` of them); the chosen one is always included."""

    @property
    def worker(self) -> WorkerKey:
        return (self.worker_id, self.dp_rank)


def candidates_from_configs(configs: Mapping[int, RuntimeConfig | None]) -> list[WorkerKey]:
    """Every ``(worker_id, dp_rank)`` over ``dp_start .. dp_start + dp_size`` of workers with a config.

    Workers whose runtime config is not known yet (None) are not routable in KV mode.
    """
    out: list[WorkerKey] = []
    for worker_id, cfg in configs.items():
        if cfg is None:
            continue
        start = cfg.data_parallel_start_rank
        out.extend((worker_id, start + r) for r in range(max(1, cfg.data_parallel_size)))
    return out


def compute_costs(
    candidates: Sequence[WorkerKey],
    isl: int,
    block_size: int,
    overlaps: OverlapScores,
    potential_prefill_tokens: Mapping[WorkerKey, float],
    potential_decode_blocks: Mapping[WorkerKey, float],
    overlap_score_weight: float = 1.0,
    track_prefill_tokens: bool = True,
) -> list[CandidateCost]:
    """Cost terms of every candidate, in candidate order.

    A worker missing from the prefill projection is assumed to have to prefill the whole prompt
    (``isl``; 0 when prefill tracking is off); one missing from the decode projection falls back to
    ``floor(prefill_blocks)``.
    """
    scores = overlaps.scores
    sizes = overlaps.tree_sizes
    default_prefill = float(isl) if track_prefill_tokens else 0.0
    out: list[CandidateCost] = []
    for key in candidates:
        prefill_tokens = float(potential_prefill_tokens.get(key, default_prefill))
        prefill_blocks = prefill_tokens / block_size
        decode = potential_decode_blocks.get(key)
        decode_blocks = float(math.floor(prefill_blocks) if decode is None else decode)
        out.append(
            CandidateCost(
                worker_id=key[0],
                dp_rank=key[1],
                overlap_blocks=scores.get(key, 0),
                prefill_tokens=prefill_tokens,
                prefill_blocks=prefill_blocks,
                decode_blocks=decode_blocks,
                logit=overlap_score_weight * prefill_blocks + decode_blocks,
                tree_size=sizes.get(key, 0),
            )
        )
    return out


def choose(costs: Sequence[CandidateCost], temperature: float, rng: random.Random) -> CandidateCost:
    """Pick one candidate from its logit (see the module docstring)."""
    if not costs:
        raise Unavailable("no workers with a known runtime config to route to")
    if temperature <= 0.0:
        best = min(c.logit for c in costs)
        tied = [c for c in costs if c.logit == best]
        if len(tied) > 1:
            smallest = min(c.tree_size for c in tied)
            tied = [c for c in tied if c.tree_size == smallest]
        return tied[0] if len(tied) == 1 else rng.choice(tied)
    lo = min(c.logit for c in costs)
    hi = max(c.logit for c in costs)
    if hi == lo:
        return rng.choice(list(costs))
    scale = (hi - lo) * temperature
    # Shifting by the minimum leaves the softmax unchanged and keeps exp() from underflowing to 0 for all.
    weights = [math.exp(-(c.logit - lo) / scale) for c in costs]
    target = rng.random() * sum(weights)
    acc = 0.0
    for c, w in zip(costs, weights, strict=True):
        acc += w
        if target < acc:
            return c
    return costs[-1]


VECTOR_MIN_CANDIDATES = 64
"""From this many candidates on, callers decide with :meth:`WorkerSelector.select_loads` (numpy over
the fleet); below it the per-candidate Python loop of :meth:`WorkerSelector.select` is cheaper."""


def _sample_softmax(logits: list[float], temperature: float, rng: random.Random) -> int:
    """Index drawn with ``p_i ∝ exp(−(logit_i − min) / ((max − min)·T))`` (uniform when all are equal)."""
    n = len(logits)
    lo = min(logits)
    hi = max(logits)
    if hi == lo:
        return rng.choice(range(n))
    scale = (hi - lo) * temperature
    exp = math.exp
    weights = [exp(-(v - lo) / scale) for v in logits]
    target = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return n - 1


class WorkerSelector:
    """Stateless apart from its random source (injectable so decisions are reproducible in tests)."""

    def __init__(self, rng: random.Random | None = None, top_k: int = 4) -> None:
        self.rng = rng or random.Random()
        self.top_k = top_k

    def select(
        self,
        candidates: Sequence[WorkerKey],
        isl: int,
        block_size: int,
        overlaps: OverlapScores,
        potential_prefill_tokens: Mapping[WorkerKey, float],
        potential_decode_blocks: Mapping[WorkerKey, float],
        *,
        overlap_score_weight: float = 1.0,
        temperature: float = 0.0,
        track_prefill_tokens: bool = True,
    ) -> Selection:
        """Choose a candidate; raises :class:`Unavailable` when there is none.

        Same decision (and the same random draws) as ``choose(compute_costs(...))``, computed over
        plain floats: with a thousand candidates, building a :class:`CandidateCost` for each one cost
        more than the rest of routing. Only the explained top candidates become objects.
        """
        if not candidates:
            raise Unavailable("no workers with a known runtime config to route to")
        default_prefill = float(isl) if track_prefill_tokens else 0.0
        get_prefill = potential_prefill_tokens.get
        get_decode = potential_decode_blocks.get
        floor = math.floor
        logits: list[float] = []
        append = logits.append
        for key in candidates:
            prefill_blocks = float(get_prefill(key, default_prefill)) / block_size
            decode = get_decode(key)
            append(overlap_score_weight * prefill_blocks + float(floor(prefill_blocks) if decode is None else decode))
        sizes = overlaps.tree_sizes
        n = len(candidates)
        if temperature <= 0.0:
            best = min(logits)
            tied = [i for i in range(n) if logits[i] == best]
            if len(tied) > 1:
                tsz = [sizes.get(candidates[i], 0) for i in tied]
                smallest = min(tsz)
                tied = [i for i, t in zip(tied, tsz, strict=True) if t == smallest]
            chosen = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        else:
            chosen = _sample_softmax(logits, temperature, self.rng)
        # The explained top-k: only candidates at or below the k-th smallest logit can be in it, so
        # rank those few by (logit, tree size) instead of keying every candidate through Python.
        cut = heapq.nsmallest(self.top_k, logits)[-1]
        near = [i for i in range(n) if logits[i] <= cut]
        near.sort(key=lambda i: (logits[i], sizes.get(candidates[i], 0)))
        top = near[: self.top_k]
        if chosen not in top:
            top[-1:] = [chosen]
        ranked = compute_costs([candidates[i] for i in top], isl, block_size, overlaps, potential_prefill_tokens,
                               potential_decode_blocks, overlap_score_weight, track_prefill_tokens)
        key = candidates[chosen]
        return Selection(
            worker_id=key[0],
            dp_rank=key[1],
            overlap_blocks=overlaps.scores.get(key, 0),
            required_blocks=-(-isl // block_size),
            candidates=ranked,
        )

    def select_loads(
        self,
        candidates: Sequence[WorkerKey],
        isl: int,
        block_size: int,
        overlaps: OverlapScores,
        loads: LoadVectors,
        *,
        overlap_score_weight: float = 1.0,
        temperature: float = 0.0,
        track_prefill_tokens: bool = True,
    ) -> Selection:
        """:meth:`select` over :class:`LoadVectors`: the same decision, random draws and explained
        candidates, with the logits of the whole fleet computed by numpy (the same IEEE operations in
        the same order as the scalar path, so the same floats)."""
        if not candidates:
            raise Unavailable("no workers with a known runtime config to route to")
        pos = loads.positions(candidates)
        if pos is None:  # a candidate the load tracker does not know: the scalar path has its defaults
            prefill_map, decode_map = loads.as_dicts()
            return self.select(candidates, isl, block_size, overlaps, prefill_map, decode_map,
                               overlap_score_weight=overlap_score_weight, temperature=temperature,
                               track_prefill_tokens=track_prefill_tokens)
        prefill = loads.prefill[pos]
        decode = loads.decode[pos]
        logits = overlap_score_weight * (prefill / block_size) + decode
        n = len(candidates)
        # Only candidates at or below the k-th smallest logit can be explained, and the minimum is
        # among them: tree sizes (the tie-breaker) are looked up for those few alone.
        k = self.top_k
        cut = np.partition(logits, k - 1)[k - 1] if n > k else logits.max()
        near = np.flatnonzero(logits <= cut)
        near_logits = logits[near]
        get_size = overlaps.tree_sizes.get
        near_sizes = np.fromiter((get_size(candidates[i], 0) for i in near.tolist()), dtype=np.int64,
                                 count=len(near))
        if temperature <= 0.0:
            at_min = near_logits == near_logits.min()
            tied_sizes = near_sizes[at_min]
            tied = near[at_min]
            if len(tied) > 1:
                tied = tied[tied_sizes == tied_sizes.min()]
            chosen = int(tied[0]) if len(tied) == 1 else self.rng.choice(tied.tolist())
        else:
            chosen = _sample_softmax(logits.tolist(), temperature, self.rng)
        top = near[np.lexsort((near_sizes, near_logits))[:k]].tolist()
        if chosen not in top:
            top[-1:] = [chosen]
        keys = [candidates[i] for i in top]
        ranked = compute_costs(keys, isl, block_size, overlaps,
                               {key: float(prefill[i]) for key, i in zip(keys, top, strict=True)},
                               {key: float(decode[i]) for key, i in zip(keys, top, strict=True)},
                               overlap_score_weight, track_prefill_tokens)
        key = candidates[chosen]
        return Selection(
            worker_id=key[0],
            dp_rank=key[1],
            overlap_blocks=overlaps.scores.get(key, 0),
            required_blocks=-(-isl // block_size),
            candidates=ranked,
        )

    def select_booked(
        self,
        sequences: ActiveSequencesMultiWorker,
        candidates: Sequence[WorkerKey],
        seq_hashes: Sequence[int] | None,
        isl: int,
        block_size: int,
        overlaps: OverlapScores,
        *,
        overlap_score_weight: float = 1.0,
        temperature: float = 0.0,
        track_prefill_tokens: bool = True,
        assume_kv_reuse: bool | None = None,
    ) -> Selection:
        """Project the request onto ``sequences``' booked loads and choose: the scalar path for a small
        fleet, the vectorised one from :data:`VECTOR_MIN_CANDIDATES` on (both decide identically)."""
        if len(candidates) >= VECTOR_MIN_CANDIDATES:
            loads = sequences.load_vectors(seq_hashes, isl, overlaps.scores,
                                           track_prefill_tokens=track_prefill_tokens, assume_kv_reuse=assume_kv_reuse)
            return self.select_loads(candidates, isl, block_size, overlaps, loads,
                                     overlap_score_weight=overlap_score_weight, temperature=temperature,
                                     track_prefill_tokens=track_prefill_tokens)
        prefill, decode = sequences.potential_loads(seq_hashes, isl, overlaps.scores,
                                                    track_prefill_tokens=track_prefill_tokens,
                                                    assume_kv_reuse=assume_kv_reuse)
        return self.select(candidates, isl, block_size, overlaps, prefill, decode,
                           overlap_score_weight=overlap_score_weight, temperature=temperature,
                           track_prefill_tokens=track_prefill_tokens)
