"""Tokenizer: a thin wrapper over Hugging Face ``tokenizers`` (Rust) loaded from a model folder.

A model folder is laid out like a Hugging Face repo without weights: ``tokenizer.json``,
``tokenizer_config.json`` (special tokens, ``chat_template``), and ``generation_config.json`` /
``config.json`` (EOS ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

#: texts longer than this are encoded through the batch API (see ``Tokenizer.encode``); below it the
#: single call is as fast or faster
LONG_TEXT_CHARS = 4096
#: Words the BPE model remembers (pre-token -> token ids). The library keeps 10,000: prompts drawing on
#: a wider vocabulary (long documents, code, several languages) miss it and redo every merge; at 100k
#: a 2000-token prompt of varied English words tokenized in ~30% less CPU, for a few MB per model.
#: ``DYN_TOKENIZER_CACHE_WORDS`` overrides (0 keeps the library's default).
CACHE_WORDS = int(os.environ.get("DYN_TOKENIZER_CACHE_WORDS") or 100_000)


def _token_content(value: Any) -> str | None:
    """Special tokens in ``tokenizer_config.json`` are either strings or ``AddedToken`` dicts."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _resize_word_cache(hf: tokenizers.Tokenizer, words: int) -> None:
    # ``_resize_cache`` is the bindings' own (underscored) hook on BPE models; other models (Unigram,
    # WordPiece) and older releases lack it, and then the library default stays.
    resize = getattr(hf.model, "_resize_cache", None)
    if words > 0 and resize is not None:
        resize(words)


class Tokenizer:
    """Encode/decode plus the special-token facts the preprocessor and decoder need."""

    __slots__ = (
        "_decode",
        "_encode",
        "_encode_batch_fast",
        "add_bos_token",
        "bos_token",
        "chat_template_source",
        "eos_token",
        "eos_token_ids",
        "hf",
        "pad_token",
        "special_token_ids",
        "unk_token",
    )

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        chat_template_source: str | list[dict[str, str]] | None = None,
        add_bos_token: bool | None = None,
    ) -> None:
        self.hf = hf
        _resize_word_cache(hf, CACHE_WORDS)
        self._encode = hf.encode
        self._encode_batch_fast = getattr(hf, "encode_batch_fast", None)
        self._decode = hf.decode
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.unk_token = unk_token
        self.pad_token = pad_token
        self.chat_template_source = chat_template_source
        self.add_bos_token = add_bos_token
        ids = list(dict.fromkeys(eos_token_ids))
        if not ids and eos_token is not None:
            tid = hf.token_to_id(eos_token)
            if tid is not None:
                ids.append(tid)
        self.eos_token_ids: list[int] = ids
        self.special_token_ids: frozenset[int] = frozenset(
            tid for tid, tok in hf.get_added_tokens_decoder().items() if tok.special
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` and the special tokens / EOS ids from a model folder.

        EOS ids are the union, in order, of ``tokenizer_config.json``'s ``eos_token`` and
        ``generation_config.json``'s ``eos_token_id`` (falling back to ``config.json``).
        """
        root = Path(model_dir)
        hf = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
        cfg = _read_json(root / "tokenizer_config.json")
        gen = _read_json(root / "generation_config.json")
        model_cfg = _read_json(root / "config.json")

        eos_token = _token_content(cfg.get("eos_token"))
        eos_ids: list[int] = []
        if eos_token is not None:
            tid = hf.token_to_id(eos_token)
            if tid is not None:
                eos_ids.append(tid)
        gen_eos = gen.get("eos_token_id") if "eos_token_id" in gen else model_cfg.get("eos_token_id")
        eos_ids.extend(_id_list(gen_eos))

        template: str | list[dict[str, str]] | None = cfg.get("chat_template")
        if template is None:
            jinja = root / "chat_template.jinja"
            if jinja.is_file():
                template = jinja.read_text(encoding="utf-8")

        return cls(
            hf,
            bos_token=_token_content(cfg.get("bos_token")),
            eos_token=eos_token,
            unk_token=_token_content(cfg.get("unk_token")),
            pad_token=_token_content(cfg.get("pad_token")),
            eos_token_ids=eos_ids,
            chat_template_source=template,
            add_bos_token=cfg.get("add_bos_token"),
        )

    # -- encode / decode ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # NUL bytes are stripped (reference §4.1 step 2): some tokenizers choke on them.
        if "\x00" in text:
            text = text.replace("\x00", "")
        if len(text) > LONG_TEXT_CHARS and self._encode_batch_fast is not None:
            # The tokenizers binding holds the GIL through a single ``encode`` (an 8k-token prompt
            # stalled every stream of the frontend for ~35 ms) but releases it in the batch calls,
            # and the fast batch skips offset tracking: half the time, off the GIL.
            return self._encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids
        return self._encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Encode many texts in one call; the Rust side parallelises across them."""
        clean = [t.replace("\x00", "") if "\x00" in t else t for t in texts]
        # encode_batch_fast skips offset tracking; older tokenizers releases lack it
        batch = getattr(self.hf, "encode_batch_fast", None) or self.hf.encode_batch
        return [enc.ids for enc in batch(clean, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def special_tokens_map(self) -> dict[str, str]:
        """The ``bos/eos/unk/pad`` token strings that exist, for the chat-template context."""
        out: dict[str, str] = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        return out
