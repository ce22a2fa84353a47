"""Numbers a request plane reads from the environment, with a clear error for a malformed value."""

from __future__ import annotations

import os

from dynamo.runtime import errors


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable {name}={raw!r} is not a number") from exc
