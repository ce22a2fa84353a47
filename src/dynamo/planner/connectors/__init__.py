"""Connectors: how the planner's decisions reach an orchestrator (local processes, an external
orchestrator through the discovery store, Kubernetes)."""

from dynamo.planner.connectors.base import SUB_COMPONENTS, Connector, TargetReplica

__all__ = ["SUB_COMPONENTS", "Connector", "TargetReplica"]
