"""Virtual connector (reference §7.3): the planner writes each decision through the discovery store with
an increasing decision id; an external orchestrator reads it with :class:`VirtualConnectorClient`,
carries it out, and acknowledges it with the decision id. The planner treats a decision as pending
until it is acknowledged or ``max_wait_s`` has passed (then it proceeds anyway, as the reference does).

Keys (JSON, not leased, so that a restarted planner or orchestrator picks up where the other left):
``v1/planner/{namespace}/decision`` → ``{"decision_id", "replicas": {"prefill": n, "decode": n}}``;
``v1/planner/{namespace}/scaled`` → ``{"decision_id", "replicas": {...}}`` (what was carried out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.runtime.discovery.store import KeyValueStore

logger = logging.getLogger(__name__)


class Decision(msgspec.Struct, frozen=True):
    decision_id: int
    replicas: dict[str, int]


def decision_key(namespace: str) -> str:
    return f"v1/planner/{namespace}/decision"


def scaled_key(namespace: str) -> str:
    return f"v1/planner/{namespace}/scaled"


async def _read(store: KeyValueStore, key: str) -> Decision | None:
    raw = await store.get(key)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=Decision)
    except msgspec.DecodeError:
        logger.warning("ignoring malformed planner record at %s", key)
        return None


class VirtualConnector(Connector):
    name = "virtual"

    def __init__(self, store: KeyValueStore, namespace: str, max_wait_s: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.namespace = namespace
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._replicas: dict[str, int] = {}
        self._decision_id = 0
        self._issued_at = 0.0

    async def start(self) -> None:
        # Continue the id sequence of a previous planner so the orchestrator never sees an id twice.
        last = await _read(self.store, decision_key(self.namespace))
        if last is not None:
            self._decision_id = last.decision_id
            self._replicas = dict(last.replicas)

    @property
    def decision_id(self) -> int:
        return self._decision_id

    async def current_replicas(self) -> dict[str, int]:
        return dict(self._replicas)

    async def set_component_replicas(self, targets: list[TargetReplica], blocking: bool = False) -> None:
        wanted = {**self._replicas, **{t.sub_component_type: max(0, t.desired_replicas) for t in targets}}
        if wanted == self._replicas and self._decision_id > 0:
            return
        self._decision_id += 1
        self._replicas = wanted
        self._issued_at = self._clock()
        decision = Decision(self._decision_id, wanted)
        await self.store.put(decision_key(self.namespace), msgspec.json.encode(decision), leased=False)
        logger.info("virtual connector: decision %d %s", decision.decision_id, wanted)
        if blocking:
            await self.wait_ready()

    async def scaled_decision_id(self) -> int:
        done = await _read(self.store, scaled_key(self.namespace))
        return done.decision_id if done is not None else 0

    async def is_ready(self) -> bool:
        if self._decision_id == 0 or await self.scaled_decision_id() >= self._decision_id:
            return True
        if self._clock() - self._issued_at >= self.max_wait_s:
            logger.warning("decision %d not acknowledged after %.0fs: proceeding", self._decision_id, self.max_wait_s)
            return True
        return False


@dataclass
class VirtualConnectorClient:
    """The orchestrator's side: :meth:`wait` for a decision newer than the last one handled, carry it
    out, then :meth:`complete` it."""

    store: KeyValueStore
    namespace: str
    handled: int = 0

    async def get(self) -> Decision | None:
        return await _read(self.store, decision_key(self.namespace))

    async def wait(self, timeout: float | None = None) -> Decision:
        """The next unhandled decision (raises TimeoutError after ``timeout`` seconds)."""
        watch = await self.store.watch(decision_key(self.namespace))
        try:
            async def first() -> Decision:
                async for ev in watch:
                    if ev.kind != "put" or ev.value is None or ev.key != decision_key(self.namespace):
                        continue
                    with contextlib.suppress(msgspec.DecodeError):
                        d = msgspec.json.decode(ev.value, type=Decision)
                        if d.decision_id > self.handled:
                            return d
                raise ConnectionError("discovery store watch ended")

            return await asyncio.wait_for(first(), timeout)
        finally:
            watch.close()

    async def complete(self, decision: Decision, replicas: dict[str, int] | None = None) -> None:
        """Acknowledge ``decision`` (optionally with the replicas actually reached)."""
        self.handled = max(self.handled, decision.decision_id)
        done = Decision(decision.decision_id, replicas if replicas is not None else dict(decision.replicas))
        await self.store.put(scaled_key(self.namespace), msgspec.json.encode(done), leased=False)
