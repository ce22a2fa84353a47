"""Worker side of model discovery: build a ModelDeploymentCard from a model folder and register it."""

from __future__ import annotations

import json
from pathlib import Path

from dynamo.llm.model_files import ModelFilesKeeper, describe_model_files, publish_model_files
from dynamo.llm.model_path import resolve_model_path
from dynamo.llm.protocols.model_card import ModelDeploymentCard, RuntimeConfig
from dynamo.runtime.component import Endpoint


def context_length_from_config(model_dir: Path) -> int:
    """``max_position_embeddings`` (or a close synonym) from ``config.json``; 0 when unknown."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def build_card(
    model_path: str,
    model_name: str | None = None,
    *,
    context_length: int | None = None,
    kv_cache_block_size: int = 16,
    model_type: list[str] | None = None,
    migration_limit: int = 0,
    chat_template: str | None = None,
    runtime_config: RuntimeConfig | None = None,
    ship_files: bool = True,
) -> ModelDeploymentCard:
    """A card for the model folder ``model_path`` (a local directory or a hub id).

    With ``ship_files`` the card describes the folder's small files by content, and
    :func:`register_llm` publishes them, so that frontends on other hosts can load the tokenizer.
    """
    model_dir = resolve_model_path(model_path)
    name = model_name or (model_path.rstrip("/").split("/")[-1] if "/" in model_path else model_path)
    template = Path(chat_template).read_text() if chat_template else None
    return ModelDeploymentCard(
        name=name,
        model_path=str(model_dir),
        model_type=model_type or ["chat", "completions"],
        context_length=context_length if context_length else context_length_from_config(model_dir),
        kv_cache_block_size=kv_cache_block_size,
        migration_limit=migration_limit,
        chat_template=template,
        runtime_config=runtime_config or RuntimeConfig(),
        files=describe_model_files(model_dir) if ship_files else None,
    )


#: one keeper per (store, digest) in this process, however many endpoints register the model
_KEEPERS: dict[tuple[int, str], ModelFilesKeeper] = {}


async def register_llm(endpoint: Endpoint, card: ModelDeploymentCard, instance_id: int | None = None) -> None:
    """Publish the card's model files (when it lists any), then the card itself.

    Files go first: a frontend that sees the card can fetch them at once.
    """
    if card.files is not None:
        runtime = endpoint.runtime
        store = runtime.store
        await publish_model_files(store, card.model_path, card.files)
        key = (id(store), card.files.digest)
        existing = _KEEPERS.get(key)
        if existing is None or not existing.running:
            keeper = ModelFilesKeeper(store, card.model_path, card.files, stopped=runtime.is_shutting_down)
            keeper.start()
            _KEEPERS[key] = keeper
    await endpoint.register_model(card, instance_id)
