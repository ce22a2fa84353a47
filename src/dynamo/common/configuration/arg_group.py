"""The unit of CLI composition: one domain's flags."""

from __future__ import annotations

from abc import ABC, abstractmethod

from dynamo.common.configuration.utils import ArgumentContainer


class ArgGroup(ABC):
    """Registers one domain's flags (runtime, KV router, frontend, a backend, ...) on a parser.

    ``add_arguments`` must be free of side effects beyond registering flags, so that a component can
    compose any set of groups, build several parsers, or render ``--help`` without touching the
    system. Values are turned into objects later, by a :class:`ConfigBase` subclass.
    """

    @abstractmethod
    def add_arguments(self, parser: ArgumentContainer) -> None:
        """Register this group's flags on ``parser`` (a parser or an argument group)."""
