"""Typed configuration objects built from parsed command lines."""

from __future__ import annotations

import argparse
import copy
import inspect
import typing
from typing import Any, ClassVar, TypeVar

_C = TypeVar("_C", bound="ConfigBase")


class ConfigBase:
    """Base of configuration objects: declare fields as annotated class attributes with defaults.

    ``from_cli_args`` copies every parsed argument onto a new instance, then fills each annotated
    field the command line did not provide with its class default, so a config object is complete
    even when built from a parser that registers only some of its groups.
    """

    @classmethod
    def from_cli_args(cls: type[_C], args: argparse.Namespace) -> _C:
        """A new instance holding every attribute of ``args`` plus class defaults for the rest.

        Fields are visited across the MRO base first; the most derived default wins. Defaults are
        deep-copied so instances never share a mutable default.
        """
        config = cls()
        for name, value in vars(args).items():
            setattr(config, name, value)
        for klass in reversed(cls.__mro__):
            for name, annotation in inspect.get_annotations(klass).items():
                if name in vars(config) or _is_class_var(annotation) or not hasattr(cls, name):
                    continue
                setattr(config, name, copy.deepcopy(getattr(cls, name)))
        return config

    def validate(self) -> None:
        """Check cross-field consistency; raise :class:`~dynamo.runtime.errors.ConfigError` if invalid."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in sorted(vars(self).items()))
        return f"{type(self).__name__}({fields})"


def _is_class_var(annotation: Any) -> bool:
    # Annotations are strings under ``from __future__ import annotations``.
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or typing.get_origin(annotation) is ClassVar
