"""Worker side of model discovery: build a ModelDeploymentCard from a model folder and register it."""

from __future__ import annotations

import json
from pathlib import Path

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
) -> ModelDeploymentCard:
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
    )


async def register_llm(endpoint: Endpoint, card: ModelDeploymentCard, instance_id: int | None = None) -> None:
    await endpoint.register_model(card, instance_id)
