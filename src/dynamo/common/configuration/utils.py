"""Flag registration with environment fallbacks.

Every flag resolves as **CLI > environment variable > code default**: the environment value becomes the
argparse default, so an explicit flag always wins. A malformed environment value is never silently
reinterpreted; it raises :class:`~dynamo.runtime.errors.ConfigError` naming the variable. When the value
feeds a flag, the error is deferred to parse time so that the CLI reports it like any other usage error
(``prog: error: ... invalid value 'maybe' for environment variable DYN_X ...``, exit code 2) — and only
if no flag on the command line overrides it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynamo.runtime.errors import ConfigError

#: anything that accepts ``add_argument``: a parser or one of its argument groups
ArgumentContainer = argparse._ActionsContainer

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

# What each built-in conversion expects, for error messages.
_EXPECTED: dict[Any, str] = {
    bool: "true/false, yes/no, on/off or 1/0",
    int: "an integer",
    float: "a number",
}


def parse_bool(value: str) -> bool:
    """``true/1/yes/on`` → True, ``false/0/no/off`` → False (case-insensitive); anything else ValueError."""
    token = value.strip().lower()
    if token in _TRUE:
        return True
    if token in _FALSE:
        return False
    raise ValueError(f"expected {_EXPECTED[bool]}")


def nullable_float(value: str) -> float | None:
    """A float flag where the literal ``None`` disables the feature (busy thresholds)."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError("expected a number or None") from None


def nullable_int(value: str) -> int | None:
    """An int flag where the literal ``None`` disables the feature (busy thresholds)."""
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError("expected an integer or None") from None


def existing_file(value: str) -> str:
    """A path that must name an existing file; ``~`` is expanded."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return str(path)


def parse_env_value(env_var: str, raw: str, value_type: Callable[[str], Any] | None) -> Any:
    """Convert one environment value; ConfigError names the variable and the value on failure.

    ``bool`` is strict (see :func:`parse_bool`), ``list`` splits on whitespace, ``None`` and ``str``
    keep the raw string, any other callable is applied.
    """
    if value_type is None or value_type is str:
        return raw
    if value_type is list:
        return raw.split()
    convert = parse_bool if value_type is bool else value_type
    try:
        return convert(raw)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
        reason = f"expected {_EXPECTED[value_type]}" if value_type in _EXPECTED else str(err)
        reason = reason or f"not a valid {getattr(value_type, '__name__', 'value')}"
        raise ConfigError(f"invalid value {raw!r} for environment variable {env_var} ({reason})") from None


def env_or_default(env_var: str, default: Any, value_type: Callable[[str], Any] | None = None) -> Any:
    """The value of ``env_var`` converted to ``value_type`` (or the default's type), else ``default``.

    With no ``value_type`` and a ``None`` default, the raw string is returned.
    """
    raw = os.environ.get(env_var)
    if raw is None:
        return default
    if value_type is None and default is not None:
        value_type = type(default)
    return parse_env_value(env_var, raw, value_type)


def add_argument(
    parser: ArgumentContainer,
    flag_name: str,
    env_var: str | Sequence[str],
    default: Any,
    help: str,
    obsolete_flag: str | None = None,
    arg_type: Callable[[str], Any] | None = str,
    *,
    aliases: Sequence[str] = (),
    **kwargs: Any,
) -> argparse.Action:
    """Register ``flag_name`` with an environment fallback; returns the argparse action.

    ``env_var`` may list several names (the first one set wins, e.g. a current and a legacy name).
    ``aliases`` are extra accepted spellings; ``obsolete_flag`` is one too, flagged as deprecated in
    the help. ``dest`` defaults to the flag without dashes, ``-`` → ``_``. With ``nargs`` ``*``/``+`` or
    a list default, the environment value is split on whitespace and each item converted with
    ``arg_type``; ``choices`` apply to environment values as well as to flags. ``arg_type=bool``
    parses ``true/false``-style words, never Python truthiness.
    """
    if arg_type is bool:
        arg_type = _cli_bool
    env_vars = (env_var,) if isinstance(env_var, str) else tuple(env_var)
    option_strings = [flag_name, *aliases] + ([obsolete_flag] if obsolete_flag else [])
    kwargs.setdefault("dest", _dest_for(flag_name))
    is_list = kwargs.get("nargs") in ("*", "+") or isinstance(default, list)
    value = _resolve_env(env_vars, default, arg_type, is_list, kwargs.get("choices"))
    action = parser.add_argument(
        *option_strings,
        type=arg_type,
        default=value,
        help=_help_text(flag_name, help, env_vars, default, obsolete_flag),
        **kwargs,
    )
    if isinstance(value, _InvalidEnvValue):
        action.type = _rejecting_invalid_env(action.type)
    return action


def add_negatable_bool_argument(
    parser: ArgumentContainer,
    flag_name: str,
    env_var: str | Sequence[str],
    default: bool,
    help: str,
    obsolete_flag: str | None = None,
    *,
    aliases: Sequence[str] = (),
    dest: str | None = None,
) -> argparse.Action:
    """Register ``--x/--no-x`` with a boolean environment fallback (see :func:`add_argument`)."""
    env_vars = (env_var,) if isinstance(env_var, str) else tuple(env_var)
    option_strings = [flag_name, *aliases] + ([obsolete_flag] if obsolete_flag else [])
    value = _resolve_env(env_vars, default, bool, False, None)
    action = parser.add_argument(
        *option_strings,
        action=argparse.BooleanOptionalAction,
        dest=dest or _dest_for(flag_name),
        default=value,
    )
    # Assigned afterwards: Python 3.10 appends its own "(default: ...)" to a help passed in, and newer
    # versions deprecate passing ``type`` to BooleanOptionalAction.
    action.help = _help_text(flag_name, help, env_vars, default, obsolete_flag)
    if isinstance(value, _InvalidEnvValue):
        action.type = _rejecting_invalid_env(None)
    return action


class _InvalidEnvValue(str):
    """Stands in for an environment value that failed to parse, carrying the error.

    It is a ``str`` on purpose: argparse runs string defaults through the action's ``type`` after
    parsing, but only when no flag set the value — exactly when the error should surface.
    """

    error: ConfigError

    def __new__(cls, raw: str, error: ConfigError) -> _InvalidEnvValue:
        value = super().__new__(cls, raw)
        value.error = error
        return value


def _rejecting_invalid_env(convert: Callable[[str], Any] | None) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if isinstance(value, _InvalidEnvValue):
            raise argparse.ArgumentTypeError(str(value.error))
        return convert(value) if convert is not None else value

    # argparse names the type in its own messages ("invalid int value: 'x'"); keep them unchanged.
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _resolve_env(
    env_vars: Sequence[str],
    default: Any,
    arg_type: Callable[[str], Any] | None,
    is_list: bool,
    choices: Any,
) -> Any:
    """The argparse default for a flag: the first set environment variable, converted, else ``default``."""
    for env_var in env_vars:
        raw = os.environ.get(env_var)
        if raw is None:
            continue
        try:
            value = _convert_env(env_var, raw, default, arg_type, is_list)
            _check_choices(env_var, raw, value if is_list else [value], choices)
        except ConfigError as err:
            return _InvalidEnvValue(raw, err)
        return value
    return default


def _convert_env(
    env_var: str, raw: str, default: Any, arg_type: Callable[[str], Any] | None, is_list: bool
) -> Any:
    if is_list:
        return [parse_env_value(env_var, item, arg_type) for item in raw.split()]
    if arg_type is _cli_bool:
        arg_type = bool
    if arg_type is None and default is not None:
        arg_type = type(default)
    return parse_env_value(env_var, raw, arg_type)


def _check_choices(env_var: str, raw: str, values: list[Any], choices: Any) -> None:
    if choices is None:
        return
    if any(value not in choices for value in values if value is not None):
        expected = ", ".join(str(choice) for choice in choices)
        raise ConfigError(
            f"invalid value {raw!r} for environment variable {env_var} (expected one of: {expected})"
        )


def _cli_bool(value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid value {value!r} ({err})") from None


def _dest_for(flag_name: str) -> str:
    return flag_name.lstrip("-").replace("-", "_")


def _help_text(
    flag_name: str, help: str, env_vars: Sequence[str], default: Any, obsolete_flag: str | None
) -> str:
    # Escaped because argparse %-formats help strings; ours are shown literally.
    text = f"{help}\nenv var: {' or '.join(env_vars)} | default: {_format_default(default)}"
    if obsolete_flag:
        text += f" ({obsolete_flag} is deprecated; use {flag_name})"
    return text.replace("%", "%%")


def _format_default(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return "[" + ", ".join(str(item) for item in default) + "]"
    return str(default)
