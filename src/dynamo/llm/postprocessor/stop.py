"""Per-request decode + stop handling in the frontend (reference §4.1 "Backend/decoder", §11.19).

For each engine item (every token produced since the previous item) :class:`StopChecker` decides
what text to emit and whether the request is finished:

* a hidden stop token id (the model's EOS) ends the stream with ``finish_reason="stop"`` and no
  ``stop_reason``; the token itself is not decoded. Ignored until ``min_tokens`` tokens exist.
* reaching ``max_tokens`` ends it with ``"length"`` (that last token is still emitted);
* stop strings are matched across token boundaries in a "jail": text that could be the start of a
  stop string is held back until it is disproved or completed. A match ends the stream with
  ``finish_reason="stop"``, ``stop_reason=<the string>``; the string is dropped unless
  ``include_stop_str_in_output``.

When the frontend decides to stop before the engine did, ``StepResult.stop_worker`` tells the caller
to send the worker a ``stop`` control message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dynamo.llm.postprocessor.detokenizer import IncrementalDetokenizer
from dynamo.llm.postprocessor.logprobs import TokenLogprobs

#: engine finish reasons (``LLMEngineOutput.finish_reason``) -> OpenAI ``finish_reason``
ENGINE_FINISH_REASONS: dict[str, str] = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "cancelled": "cancelled",
    "abort": "cancelled",
    "content_filter": "content_filter",
    "error": "error",
}


class StepResult:
    """What one engine item produced for the client."""

    __slots__ = ("cached_tokens", "finish_reason", "logprobs", "num_tokens", "stop_reason", "stop_worker", "text")

    def __init__(
        self,
        text: str,
        num_tokens: int,
        finish_reason: str | None = None,
        stop_reason: str | int | None = None,
        stop_worker: bool = False,
    ) -> None:
        #: text delta to send (may be "")
        self.text = text
        #: how many of the item's token ids were accepted (the rest come after a stop)
        self.num_tokens = num_tokens
        #: OpenAI finish reason once the request is over, else None
        self.finish_reason = finish_reason
        #: the matched stop string (or visible stop token id), if that is why it finished
        self.stop_reason = stop_reason
        #: the frontend stopped the request before the engine did: send it a ``stop``
        self.stop_worker = stop_worker
        #: prompt tokens the engine served from its KV cache, when it reports them
        self.cached_tokens: int | None = None
        #: the accepted tokens' logprobs, when the engine sent them
        self.logprobs: TokenLogprobs | None = None

    def __repr__(self) -> str:
        return (f"StepResult(text={self.text!r}, num_tokens={self.num_tokens}, finish_reason={self.finish_reason!r}, "
                f"stop_reason={self.stop_reason!r}, stop_worker={self.stop_worker})")


class StopStringJail:
    """Holds back text that may be the beginning of a stop string.

    Full matches are found with ``str.find`` on the held text plus the new text (held text is shorter
    than the longest stop string). What to hold back is the longest suffix of the text so far that is
    a proper prefix of some stop string: one Knuth-Morris-Pratt automaton per stop string, advanced by
    the new characters only, tracks it in O(new text) steps per push and O(stop length) memory. (Keeping
    every prefix of every stop string in a set, as this class once did, cost O(length²): 33 MB for one
    8k-character stop string, built on the event loop.)
    """

    __slots__ = ("_fail", "_held", "_state", "include_in_output", "stops")

    def __init__(self, stops: Iterable[str], include_in_output: bool = False) -> None:
        self.stops: tuple[str, ...] = tuple(s for s in dict.fromkeys(stops) if s)
        self.include_in_output = include_in_output
        self._fail: list[list[int]] = [_failure_table(s) for s in self.stops]
        # per stop string: how many of its leading characters the end of the text so far matches
        self._state: list[int] = [0] * len(self.stops)
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """Feed new text; return ``(text to emit, matched stop string or None)``."""
        buf = self._held + text if self._held else text
        if not buf:
            return "", None
        best_at = -1
        best: str | None = None
        for s in self.stops:
            at = buf.find(s)
            if at != -1 and (best_at == -1 or at < best_at or (at == best_at and len(s) > len(best or ""))):
                best_at, best = at, s
        if best is not None:
            self._reset()
            end = best_at + len(best) if self.include_in_output else best_at
            return buf[:end], best
        hold = 0
        state = self._state
        for i, s in enumerate(self.stops):
            q = _advance(s, self._fail[i], state[i], text)
            state[i] = q
            if q > hold:
                hold = q
        if hold:
            self._held = buf[-hold:]
            return buf[:-hold], None
        self._held = ""
        return buf, None

    def flush(self) -> str:
        """Release held-back text (the stream ended without completing a stop string)."""
        held = self._held
        self._reset()
        return held

    def _reset(self) -> None:
        self._held = ""
        self._state = [0] * len(self.stops)

    @property
    def held(self) -> str:
        return self._held


def _failure_table(s: str) -> list[int]:
    """``fail[k]``: length of the longest proper border (prefix that is also a suffix) of ``s[:k]``."""
    fail = [0] * (len(s) + 1)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k]
        if s[i] == s[k]:
            k += 1
        fail[i + 1] = k
    return fail


def _advance(s: str, fail: list[int], q: int, text: str) -> int:
    """KMP step: from ``q`` matched characters of ``s``, consume ``text``; amortised O(len(text)).

    The caller has already ruled out a full match, so ``q`` stays below ``len(s)``.
    """
    for ch in text:
        while q and s[q] != ch:
            q = fail[q]
        if s[q] == ch:
            q += 1
        if q == len(s):  # unreachable after a failed find, but keep the automaton well-defined
            q = fail[q]
    return q


class StopChecker:
    """Detokenizer + stop conditions for one request (one choice)."""

    __slots__ = (
        "_detok",
        "_hidden",
        "_jail",
        "finish_reason",
        "finished",
        "max_tokens",
        "min_tokens",
        "num_generated",
        "stop_reason",
    )

    def __init__(
        self,
        tokenizer: Any | None,
        *,
        prompt_ids: Sequence[int] = (),
        max_tokens: int | None = None,
        stop: Iterable[str] | None = None,
        hidden_stop_ids: Iterable[int] = (),
        min_tokens: int = 0,
        ignore_eos: bool = False,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = False,
    ) -> None:
        """``tokenizer`` may be None for text-only streams (items carry ``text``, no ids)."""
        self._detok = (
            IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
            if tokenizer is not None else None
        )
        self._hidden: frozenset[int] = frozenset() if ignore_eos else frozenset(hidden_stop_ids)
        jail = StopStringJail(stop or (), include_stop_str_in_output)
        self._jail: StopStringJail | None = jail if jail.stops else None
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens or 0
        self.num_generated = 0
        self.finished = False
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    @classmethod
    def for_request(cls, tokenizer: Any | None, request: Any, prompt_ids: Sequence[int] | None = None) -> StopChecker:
        """Build from a ``PreprocessedRequest`` (its stop conditions, sampling and output options)."""
        sc = request.stop_conditions
        return cls(
            tokenizer,
            prompt_ids=request.token_ids if prompt_ids is None else prompt_ids,
            max_tokens=sc.max_tokens,
            stop=sc.stop,
            hidden_stop_ids=sc.stop_token_ids_hidden or (),
            min_tokens=sc.min_tokens or 0,
            ignore_eos=bool(sc.ignore_eos),
            include_stop_str_in_output=bool(request.sampling_options.include_stop_str_in_output),
            skip_special_tokens=bool(request.output_options.skip_special_tokens),
        )

    def process_output(self, output: Any) -> StepResult:
        """Handle one ``LLMEngineOutput``."""
        return self.process(output.token_ids, text=output.text, finish_reason=output.finish_reason,
                            stop_reason=output.stop_reason)

    def process(
        self,
        token_ids: Sequence[int],
        *,
        text: str | None = None,
        finish_reason: str | None = None,
        stop_reason: str | int | None = None,
    ) -> StepResult:
        """Handle one engine item: ``token_ids`` generated since the last item, ``text`` only for
        engines that send text instead of ids, ``finish_reason`` if the engine finished."""
        if self.finished:
            return StepResult("", 0)
        n = len(token_ids)
        accepted = n
        local_finish: str | None = None
        hidden = self._hidden
        max_tokens = self.max_tokens
        start = self.num_generated

        if hidden and not hidden.isdisjoint(token_ids):
            min_tokens = self.min_tokens
            for i, tid in enumerate(token_ids):
                if tid in hidden and start + i + 1 >= min_tokens:
                    accepted = i
                    local_finish = "stop"
                    break
        if max_tokens is not None:
            room = max(max_tokens - start, 0)
            if local_finish == "stop":
                # the stop token itself is token number accepted+1 of this item
                if accepted + 1 > room:
                    accepted, local_finish = room, "length"
            elif accepted >= room:
                accepted, local_finish = room, "length"
        # the hidden stop token counts as generated (usage) but is never decoded
        self.num_generated = start + accepted + (1 if local_finish == "stop" else 0)

        if self._detok is not None and accepted:
            delta = self._detok.step(token_ids[:accepted] if accepted < n else token_ids)
        elif text:
            delta = text
        else:
            delta = ""

        engine_finish = ENGINE_FINISH_REASONS.get(finish_reason, finish_reason) if finish_reason else None
        jail = self._jail
        matched: str | None = None
        if jail is not None:
            if self.num_generated < self.min_tokens:
                delta = jail.flush() + delta
            else:
                delta, matched = jail.push(delta)

        if matched is not None:
            return self._finish(delta, accepted, "stop", matched,
                                stop_worker=engine_finish is None)
        if local_finish is not None or engine_finish is not None:
            tail = self._detok.flush() if self._detok is not None else ""
            if jail is not None:
                if tail:
                    tail, matched = jail.push(tail)
                    if matched is not None:
                        return self._finish(delta + tail, accepted, "stop", matched,
                                            stop_worker=engine_finish is None)
                tail += jail.flush()
            if local_finish is not None:
                return self._finish(delta + tail, accepted, local_finish, None, stop_worker=engine_finish is None)
            return self._finish(delta + tail, accepted, engine_finish,
                                stop_reason if engine_finish == "stop" else None, stop_worker=False)
        return StepResult(delta, accepted)

    def _finish(self, text: str, accepted: int, reason: str | None, stop_reason: str | int | None,
                *, stop_worker: bool) -> StepResult:
        self.finished = True
        self.finish_reason = reason
        self.stop_reason = stop_reason
        return StepResult(text, accepted, reason, stop_reason, stop_worker)
