"""Resolve ``--model-path``: a local directory, or a Hugging Face repo id fetched into the local cache."""

from __future__ import annotations

import os
from pathlib import Path

from dynamo.runtime.errors import ConfigError

#: what the frontend and workers read from a model folder (no weights are ever needed)
MODEL_FILES = ["tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json",
               "special_tokens_map.json", "chat_template.jinja"]


def resolve_model_path(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").exists():
            raise ConfigError(f"model directory {path} has no tokenizer.json")
        return path.resolve()
    if path.exists():
        raise ConfigError(f"--model-path {model!r} is a file; pass the model directory")
    if model.count("/") != 1 or model.startswith((".", "/")):
        raise ConfigError(f"--model-path {model!r} is neither a local directory nor a Hugging Face repo id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - tokenizers depends on it
        raise ConfigError(f"cannot download {model!r}: huggingface_hub is not installed") from exc
    try:
        local = snapshot_download(model, allow_patterns=MODEL_FILES, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ConfigError(
                f"model {model!r} is not cached and HF_HUB_OFFLINE is set: pass --model-path with a local "
                "directory that holds tokenizer.json and tokenizer_config.json") from None
        try:
            local = snapshot_download(model, allow_patterns=MODEL_FILES)
        except Exception as exc:
            raise ConfigError(
                f"model {model!r} is not a local directory and could not be downloaded ({type(exc).__name__}); "
                "offline? pass --model-path with a local directory that holds tokenizer.json and "
                "tokenizer_config.json") from None
    return Path(local)
