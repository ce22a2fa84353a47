"""Argument groups shared by Dynamo components."""

from dynamo.common.configuration.groups.runtime_args import RuntimeArgGroup, RuntimeConfig

__all__ = ["RuntimeArgGroup", "RuntimeConfig"]
