"""The logprobs of the tokens one step accepted, carried from the engine item to the response writer.

The stop checker may accept only a prefix of an engine item's tokens (a stop token, ``max_tokens``);
the logprobs sent to the client are those of exactly the accepted tokens, so they line up with the
text the client receives.
"""

from __future__ import annotations

from typing import Any


class TokenLogprobs:
    """Per accepted token: its id, its logprob, and the top candidates as ``(token_id, logprob)``."""

    __slots__ = ("logprobs", "token_ids", "top")

    def __init__(self, token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]] | None,
                 ) -> None:
        self.token_ids = token_ids
        self.logprobs = logprobs
        self.top = top

    @classmethod
    def accepted(cls, output: Any, num_tokens: int) -> TokenLogprobs | None:
        """The logprobs of the first ``num_tokens`` tokens of an ``LLMEngineOutput``, or None when the
        engine sent none (not asked for, or an engine that cannot)."""
        lps = output.log_probs
        if lps is None or num_tokens <= 0:
            return None
        top = output.top_logprobs
        return cls(list(output.token_ids[:num_tokens]), list(lps[:num_tokens]),
                   [list(t) for t in top[:num_tokens]] if top is not None else None)

    def __len__(self) -> int:
        return len(self.token_ids)
