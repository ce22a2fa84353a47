"""Argument groups shared by Dynamo components."""

from dynamo.common.configuration.groups.kv_router_args import KvRouterArgGroup, kv_router_config
from dynamo.common.configuration.groups.runtime_args import RuntimeArgGroup, RuntimeConfig

__all__ = ["KvRouterArgGroup", "RuntimeArgGroup", "RuntimeConfig", "kv_router_config"]
