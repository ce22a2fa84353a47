"""Token logprobs in OpenAI's two shapes: chat's ``logprobs.content`` entries and completions' parallel
arrays (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

Each token is shown as the text it decodes to on its own (as vLLM does); a token holding part of a
multi-byte character decodes to U+FFFD, which is why chat entries also carry ``bytes``.
"""

from __future__ import annotations

import math
from typing import Any

from dynamo.llm.postprocessor.logprobs import TokenLogprobs

#: stand-in for -inf: JSON has no infinities, and clients expect a number (vLLM's choice too)
MIN_LOGPROB = -9999.0

def _finite(lp: float) -> float:
    return lp if lp >= MIN_LOGPROB and not math.isnan(lp) else MIN_LOGPROB


class TokenTexts:
    """``token id -> (text, utf-8 bytes)`` for one request, cached: top candidates repeat a lot."""

    __slots__ = ("_cache", "_decode")

    def __init__(self, tokenizer: Any) -> None:
        self._decode = tokenizer.decode
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            text = self._decode([token_id], skip_special_tokens=False)
            hit = self._cache[token_id] = (text, list(text.encode("utf-8")))
        return hit


def chat_entries(texts: TokenTexts, lp: TokenLogprobs) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` entries, one per token."""
    out = []
    top = lp.top
    for i, tid in enumerate(lp.token_ids):
        text, raw = texts.get(tid)
        cands = []
        if top is not None:
            for cid, clp in top[i]:
                ctext, craw = texts.get(cid)
                cands.append({"token": ctext, "logprob": _finite(clp), "bytes": craw})
        out.append({"token": text, "logprob": _finite(lp.logprobs[i]), "bytes": raw, "top_logprobs": cands})
    return out


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat choice's ``logprobs`` object."""
    return {"content": entries, "refusal": None}


class CompletionLogprobs:
    """One completions choice's logprobs; ``text_offset`` runs on across streamed chunks."""

    __slots__ = ("offset", "text_offset", "texts", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self, texts: TokenTexts, offset: int = 0) -> None:
        self.texts = texts
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, lp: TokenLogprobs) -> dict[str, Any]:
        """Record one step's tokens; return the logprobs object for just those (a streamed chunk's)."""
        texts = self.texts
        tokens, chosen, tops, offsets = [], [], [], []
        top = lp.top
        for i, tid in enumerate(lp.token_ids):
            text, _ = texts.get(tid)
            value = _finite(lp.logprobs[i])
            # The sampled token is always listed, then the top candidates (OpenAI's legacy shape).
            cands = {text: value}
            if top is not None:
                for cid, clp in top[i]:
                    cands.setdefault(texts.get(cid)[0], _finite(clp))
            tokens.append(text)
            chosen.append(value)
            tops.append(cands)
            offsets.append(self.offset)
            self.offset += len(text)
        self.tokens += tokens
        self.token_logprobs += chosen
        self.top_logprobs += tops
        self.text_offset += offsets
        return {"tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets}

    def whole(self) -> dict[str, Any]:
        """Everything recorded: the non-streamed choice's logprobs."""
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}
