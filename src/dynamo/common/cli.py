"""Process entry points: logging from ``DYN_LOG``/``-v``, uvloop, and config errors as exit code 2."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from dynamo.runtime.errors import ConfigError

_LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(verbosity: int = 0) -> None:
    """``-v`` debug, ``-vv`` trace; otherwise ``DYN_LOG`` (trace|debug|info|warn|error), default info."""
    if verbosity >= 2:
        level = 5
    elif verbosity == 1:
        level = logging.DEBUG
    else:
        level = _LEVELS.get(os.environ.get("DYN_LOG", "info").split(",")[0].strip().lower(), logging.INFO)
    logging.addLevelName(5, "TRACE")
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )


class _NoSpec:
    name = "dynamo"


def fail(message: str, code: int = 2) -> NoReturn:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "dynamo"
    if prog == "__main__.py":
        prog = f"python -m {(sys.modules['__main__'].__spec__ or _NoSpec).name.removesuffix('.__main__')}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``main`` on uvloop; a ConfigError becomes a one-line message and exit code 2."""
    try:
        import uvloop

        uvloop.run(main())
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def asyncio_run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(main())
