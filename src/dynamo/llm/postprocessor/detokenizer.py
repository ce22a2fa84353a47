"""Incremental detokenization with Hugging Face-style offsets (reference §4.1 "Backend/decoder").

Decoding a token in isolation is wrong for most tokenizers: SentencePiece decoders strip a leading
space, and byte-level BPE splits multi-byte characters across tokens. The decoder therefore keeps a
small window: ``prefix_offset`` (start of already-emitted context) and ``read_offset`` (end of
emitted text). Each step decodes ``ids[prefix:]`` and ``ids[prefix:read]`` and emits the suffix of the
former beyond the latter, but only when it grew and does not end in U+FFFD (an incomplete UTF-8
sequence that the next token will complete). The window is a handful of tokens, so the cost per step
is constant; consumed ids are dropped periodically so memory stays bounded too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
#: how many prompt tokens prime the window (``prefix_offset = num_prompt - 5``)
PROMPT_CONTEXT_TOKENS = 5
# Compact the id buffer once this many consumed ids sit before the window.
_COMPACT_THRESHOLD = 512


class IncrementalDetokenizer:
    """Turns streamed token ids into text deltas that never contain broken UTF-8."""

    __slots__ = ("_decode", "_ids", "_prefix", "_read", "skip_special_tokens")

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = False,
    ) -> None:
        """``tokenizer``: our ``Tokenizer`` or a raw ``tokenizers.Tokenizer`` (anything with
        ``decode(ids, skip_special_tokens=...)``). ``prompt_ids``: only the last few are kept, to give
        the first generated token its left context (e.g. the space SentencePiece would strip)."""
        self._decode: Callable[..., str] = tokenizer.decode
        self.skip_special_tokens = skip_special_tokens
        tail = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._ids: list[int] = tail
        self._prefix = 0
        self._read = len(tail)

    def step(self, token_ids: Sequence[int] | int) -> str:
        """Add one id or a batch of ids; return the newly decodable text ("" if none yet)."""
        ids = self._ids
        if isinstance(token_ids, int):
            ids.append(token_ids)
        elif token_ids:
            ids.extend(token_ids)
        else:
            return ""
        decode = self._decode
        skip = self.skip_special_tokens
        prefix, read = self._prefix, self._read
        prefix_text = decode(ids[prefix:read], skip_special_tokens=skip) if read > prefix else ""
        new_text = decode(ids[prefix:], skip_special_tokens=skip)
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix = read
        self._read = len(ids)
        if read > _COMPACT_THRESHOLD:
            del ids[:read]
            self._prefix = 0
            self._read -= read
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        """Text still held back at the end of the stream, minus any trailing incomplete character."""
        ids, prefix, read = self._ids, self._prefix, self._read
        if read >= len(ids):
            return ""
        skip = self.skip_special_tokens
        prefix_text = self._decode(ids[prefix:read], skip_special_tokens=skip) if read > prefix else ""
        new_text = self._decode(ids[prefix:], skip_special_tokens=skip)
        self._prefix = self._read = len(ids)
        if len(new_text) <= len(prefix_text):
            return ""
        return new_text[len(prefix_text):].rstrip(REPLACEMENT_CHAR)

    @property
    def pending_tokens(self) -> int:
        """Ids received but not yet turned into text (an incomplete character, usually)."""
        return len(self._ids) - self._read
