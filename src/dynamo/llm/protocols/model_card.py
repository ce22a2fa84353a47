"""ModelDeploymentCard: what a worker registers so frontends can serve its model (DESIGN §5)."""

from __future__ import annotations

import hashlib

import msgspec


class RuntimeConfig(msgspec.Struct, omit_defaults=True):
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    data_parallel_size: int = 1
    data_parallel_start_rank: int = 0
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_local_indexer: bool = False


class ModelDeploymentCard(msgspec.Struct, omit_defaults=True):
    """``model_type`` lists what the model serves: ``chat``, ``completions``, ``embedding``, ``prefill``.

    ``model_path`` is a local directory (or hub id) holding ``tokenizer.json`` and
    ``tokenizer_config.json``; ``chat_template`` overrides the tokenizer's template when set.
    """

    name: str
    model_path: str
    model_type: list[str] = msgspec.field(default_factory=lambda: ["chat", "completions"])
    model_input: str = "tokens"
    context_length: int = 0
    kv_cache_block_size: int = 16
    migration_limit: int = 0
    chat_template: str | None = None
    runtime_config: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)

    def checksum(self) -> str:
        """Stable digest of the fields that must agree between workers of one model.

        Runtime sizing (KV blocks, batch limits) may differ between workers, so it is excluded.
        """
        ident = msgspec.json.encode(
            [self.name, self.model_path, sorted(self.model_type), self.model_input, self.context_length,
             self.kv_cache_block_size, self.chat_template]
        )
        return hashlib.blake2b(ident, digest_size=16).hexdigest()
