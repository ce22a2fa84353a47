"""Marker matching shared by the streaming output parsers."""

from __future__ import annotations

from collections.abc import Sequence


def held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``: that much
    must be held back, since the next delta may complete the marker."""
    # The common case on the per-token path: no marker's first character near the end at all.
    tail = text[-max(len(m) for m in markers):] if markers else ""
    if not any(m[0] in tail for m in markers):
        return 0
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best
