"""Parity vectors for block hashing (reference §2.1): must match the engines' and mocker's events."""

from __future__ import annotations

import struct

import pytest
import xxhash

from dynamo.kv_router.hashing import XXH3_SEED, compute_block_hashes, compute_seq_hashes, lora_seed, to_u64

pytestmark = pytest.mark.unit

TOKENS_0_63 = [15310707395893867146, 15292316782987903195, 5532946206955930018, 14928757266181269122]


def test_full_blocks_parity() -> None:
    assert compute_block_hashes(list(range(64)), 16) == TOKENS_0_63


def test_trailing_partial_block_ignored() -> None:
    assert compute_block_hashes(list(range(40)), 16) == TOKENS_0_63[:2]
    assert compute_block_hashes(list(range(15)), 16) == []


def test_lora_salt_parity() -> None:
    assert compute_block_hashes(list(range(32)), 16, lora_name="my-lora") == [
        7774427462321301335,
        11306793257002815283,
    ]
    assert compute_block_hashes(list(range(32)), 16, lora_name="") == TOKENS_0_63[:2]
    assert lora_seed(None) == XXH3_SEED


def test_block_hash_is_xxh3_of_le_u32_tokens() -> None:
    data = struct.pack("<16I", *range(16))
    assert compute_block_hashes(list(range(16)), 16) == [xxhash.xxh3_64_intdigest(data, XXH3_SEED)]


def test_sequence_hashes_chain() -> None:
    seq = compute_seq_hashes(TOKENS_0_63)
    assert seq[0] == TOKENS_0_63[0]
    for i in range(1, 4):
        expected = xxhash.xxh3_64_intdigest(struct.pack("<QQ", seq[i - 1], TOKENS_0_63[i]), XXH3_SEED)
        assert seq[i] == expected
    # Continuing from a parent gives the same chain as hashing the whole prefix at once.
    assert compute_seq_hashes(TOKENS_0_63[2:], parent=seq[1]) == seq[2:]


def test_signed_hashes_reinterpreted() -> None:
    assert to_u64(-1) == (1 << 64) - 1
    assert to_u64(5) == 5
