"""Block and sequence hashes, bit-exact with the engines' KV events (reference §2.1).

Tokens are hashed as little-endian u32 in full blocks only (a trailing partial block is ignored) with
XXH3-64 and seed 1337; sequence hashes chain the previous sequence hash with the block's local hash.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence

import xxhash

XXH3_SEED = 1337
_MASK64 = (1 << 64) - 1
_xxh3 = xxhash.xxh3_64_intdigest
_pack_pair = struct.Struct("<QQ").pack
_LITTLE = sys.byteorder == "little"


def lora_seed(lora_name: str | None) -> int:
    """The hash seed for a LoRA adapter: ``1337 + xxh3(name)`` (wrapping), or 1337 for the base model."""
    if not lora_name:
        return XXH3_SEED
    return (XXH3_SEED + _xxh3(lora_name.encode("utf-8"))) & _MASK64


def _token_bytes(tokens: Sequence[int]) -> bytes:
    arr = array("I", tokens)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def compute_block_hashes(
    tokens: Sequence[int],
    block_size: int,
    lora_name: str | None = None,
    mm_hashes: Sequence[Iterable[int]] | None = None,
) -> list[int]:
    """Local block hashes (``tokens_hash``) of every full block of ``tokens``.

    ``mm_hashes[i]``, when given, holds the multimodal object hashes that fall in block ``i``; they are
    appended (sorted, LE u64) to that block's bytes before hashing.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    seed = lora_seed(lora_name)
    n_blocks = len(tokens) // block_size
    if n_blocks == 0:
        return []
    data = _token_bytes(tokens[: n_blocks * block_size])
    step = block_size * 4
    out = [_xxh3(data[i * step : (i + 1) * step], seed) for i in range(n_blocks)]
    if mm_hashes:
        for i, objs in enumerate(mm_hashes[:n_blocks]):
            extra = sorted(objs)
            if extra:
                buf = data[i * step : (i + 1) * step] + struct.pack(f"<{len(extra)}Q", *extra)
                out[i] = _xxh3(buf, seed)
    return out


def compute_seq_hashes(block_hashes: Sequence[int], parent: int | None = None) -> list[int]:
    """Chained sequence hashes: ``seq[0] = local[0]`` (or chained onto ``parent`` when continuing)."""
    out: list[int] = []
    prev = parent
    for local in block_hashes:
        prev = local if prev is None else _xxh3(_pack_pair(prev, local), XXH3_SEED)
        out.append(prev)
    return out


def to_u64(value: int) -> int:
    """Reinterpret a possibly signed 64-bit hash as unsigned (engines may send i64)."""
    return value & _MASK64
