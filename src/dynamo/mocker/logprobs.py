"""Plausible log probabilities for the mocker's tokens, so the logprobs path of the API can be driven
end to end without a real engine.

The mocker samples uniformly, so there is no real distribution to report. Instead each token gets a
made-up one that satisfies what clients rely on: the sampled token is the most likely candidate
(greedy-like), its logprob is in ``(log 0.35, log 0.95]``, the other candidates follow in strictly
decreasing order, and the probabilities sum to less than 1. Values are a pure function of
``(token_id, position)``, so a test can recompute them. Pure logic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dynamo.mocker.scheduler import TOKEN_ID_HIGH, TOKEN_ID_LOW

#: the top candidate's probability lies in [TOP_P_MIN, TOP_P_MIN + TOP_P_SPAN)
TOP_P_MIN = 0.35
TOP_P_SPAN = 0.6
#: each further candidate gets this share of what the previous ones left
DECAY = 0.5
#: stride between alternative candidates' ids, prime to the id span so they never repeat
_STRIDE = 37


def _unit(token_id: int, position: int) -> float:
    """A well-mixed value in [0, 1) from the token and its position (splitmix-style integer hash)."""
    x = (token_id * 0x9E3779B1 + position * 0x85EBCA77) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x / 2**32


def token_logprobs(token_ids: Sequence[int], start: int, k: int,
                   ) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """For tokens sampled at positions ``start, start+1, ...``: each one's logprob, and its ``k`` most
    likely candidates as ``(token_id, logprob)`` (the sampled token first)."""
    span = TOKEN_ID_HIGH - TOKEN_ID_LOW
    chosen: list[float] = []
    top: list[list[tuple[int, float]]] = []
    for offset, tid in enumerate(token_ids):
        p = TOP_P_MIN + TOP_P_SPAN * _unit(tid, start + offset)
        lp = math.log(p)
        chosen.append(lp)
        if k <= 0:
            top.append([])
            continue
        cands = [(tid, lp)]
        rest = 1.0 - p
        j = 1
        while len(cands) < k:
            alt = TOKEN_ID_LOW + (tid - TOKEN_ID_LOW + _STRIDE * j) % span
            j += 1
            if alt == tid:
                continue
            rest *= DECAY
            cands.append((alt, math.log(rest)))
        top.append(cands)
    return chosen, top
