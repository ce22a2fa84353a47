"""The one interface every connector implements: set replicas per sub-component, and say whether the
last change has been carried out (reference §7.3)."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

SUB_COMPONENTS = ("prefill", "decode")


@dataclass(frozen=True)
class TargetReplica:
    """Desired replicas of one pool: ``sub_component_type`` is ``prefill`` or ``decode`` (agg workers
    are the decode pool); ``component_name`` overrides how the connector finds the pool."""

    sub_component_type: str
    desired_replicas: int
    component_name: str | None = None


class Connector(abc.ABC):
    """Owns the replicas of the scaled pools.

    The planner calls :meth:`set_component_replicas` at most once per decision and never while
    :meth:`is_ready` is False (a previous change still rolling out), except for
    ``blocking=True`` callers who wait for readiness themselves. Implementations must be idempotent:
    setting the current count again changes nothing.
    """

    name = "connector"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect / discover the deployment; raise a DynamoError with a clear message if impossible."""

    @abc.abstractmethod
    async def current_replicas(self) -> dict[str, int]:
        """Replicas per sub-component as the connector last set or observed them."""

    @abc.abstractmethod
    async def set_component_replicas(self, targets: list[TargetReplica], blocking: bool = False) -> None:
        """Ask for ``targets``; with ``blocking`` return only once :meth:`is_ready`."""

    @abc.abstractmethod
    async def is_ready(self) -> bool:
        """True when the deployment matches the last request (nothing pending)."""

    async def wait_ready(self, poll_s: float = 0.1) -> None:
        """Return once :meth:`is_ready`. Readiness is state outside this process (discovery, the
        Kubernetes API, an orchestrator's acknowledgement), so it is polled."""
        while not await self.is_ready():  # noqa: ASYNC110 - external state, nothing to wait on
            await asyncio.sleep(poll_s)

    async def add_component(self, sub_component_type: str) -> None:
        current = (await self.current_replicas()).get(sub_component_type, 0)
        await self.set_component_replicas([TargetReplica(sub_component_type, current + 1)])

    async def remove_component(self, sub_component_type: str) -> None:
        current = (await self.current_replicas()).get(sub_component_type, 0)
        await self.set_component_replicas([TargetReplica(sub_component_type, max(0, current - 1))])

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
