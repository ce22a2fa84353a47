"""ModelDeploymentCard: what a worker registers so frontends can serve its model (DESIGN §5)."""

from __future__ import annotations

import hashlib

import msgspec


class DisaggregatedEndpoint(msgspec.Struct, omit_defaults=True):
    """A prefill worker's KV bootstrap listener (bootstrap path of disaggregation, reference §3.7)."""

    bootstrap_host: str
    bootstrap_port: int


class RuntimeConfig(msgspec.Struct, omit_defaults=True):
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    data_parallel_size: int = 1
    data_parallel_start_rank: int = 0
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_local_indexer: bool = False
    #: prefill workers with a bootstrap listener: where decode workers fetch the KV
    disaggregated_endpoint: DisaggregatedEndpoint | None = None


class ModelFile(msgspec.Struct, frozen=True):
    """One file shipped with a card: its name in the model folder, size in bytes, sha256 (hex)."""

    name: str
    size: int
    sha256: str


class ModelFiles(msgspec.Struct, frozen=True):
    """What a frontend needs to rebuild the worker's model folder from the discovery store.

    ``files`` are concatenated in order and cut into raw chunks of ``chunk_size`` bytes; ``chunks``
    holds the sha256 of each raw chunk. ``digest`` (sha256 over ``files``) names the content: equal
    digests mean byte-identical files, wherever each worker keeps them (see ``llm/model_files.py``).
    """

    digest: str
    files: list[ModelFile]
    chunk_size: int
    chunks: list[str]


class ModelDeploymentCard(msgspec.Struct, omit_defaults=True):
    """``model_type`` lists what the model serves: ``chat``, ``completions``, ``embedding``, ``prefill``.

    ``model_path`` is a local directory (or hub id) holding ``tokenizer.json`` and
    ``tokenizer_config.json``; ``chat_template`` overrides the tokenizer's template when set.
    ``model_path`` is only meaningful on the worker's host: ``files`` (when set) describes the same
    files by content, and a frontend that cannot see ``model_path`` fetches them from the store.
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
    files: ModelFiles | None = None

    def checksum(self) -> str:
        """Stable digest of the fields that must agree between workers of one model.

        Runtime sizing (KV blocks, batch limits) may differ between workers, so it is excluded. With
        ``files`` the content digest stands for the folder: workers on different hosts keep the same
        files under different paths, and a frontend rewrites ``model_path`` to its local copy.
        """
        source = f"sha256:{self.files.digest}" if self.files is not None else self.model_path
        ident = msgspec.json.encode(
            [self.name, source, sorted(self.model_type), self.model_input, self.context_length,
             self.kv_cache_block_size, self.chat_template]
        )
        return hashlib.blake2b(ident, digest_size=16).hexdigest()
