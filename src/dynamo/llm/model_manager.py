"""Frontend model discovery: watch model cards, group workers into worker sets, build one engine per set.

A worker set is every worker of one model in one namespace (prefill workers form their own set). The
first worker's card defines the set; a later worker whose card checksum differs is rejected (a
rolling update uses a new namespace). When the last worker of a set leaves, the set and its engine go;
when the last set of a model goes, the model disappears from ``/v1/models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dynamo.llm.model_files import localize_card
from dynamo.llm.protocols.engine import LLMEngineOutput, merge_outputs
from dynamo.llm.protocols.model_card import ModelDeploymentCard, RuntimeConfig
from dynamo.runtime import errors
from dynamo.runtime.client import Client
from dynamo.runtime.discovery import registry
from dynamo.runtime.distributed import DistributedRuntime
from dynamo.runtime.tasks import supervise

logger = logging.getLogger(__name__)


@dataclass
class WorkerSet:
    namespace: str
    model: str
    prefill: bool
    card: ModelDeploymentCard
    checksum: str
    endpoint: tuple[str, str, str]
    instances: set[int] = field(default_factory=set)
    #: each instance's own runtime config (KV capacity, bootstrap endpoint, ...): cards of one set
    #: agree on the model, not on sizing
    runtime_configs: dict[int, RuntimeConfig] = field(default_factory=dict)
    client: Client | None = None
    engine: Any = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def key(self) -> str:
        return f"{self.namespace}:prefill" if self.prefill else self.namespace


EngineFactory = Callable[[WorkerSet], Awaitable[Any]]


class ModelManager:
    def __init__(self, runtime: DistributedRuntime, engine_factory: EngineFactory,
                 namespace: str | None = None) -> None:
        self.runtime = runtime
        self.engine_factory = engine_factory
        self.namespace = namespace
        self.sets: dict[str, dict[str, WorkerSet]] = {}  # model -> set key -> WorkerSet
        self._by_key: dict[str, tuple[str, str, int]] = {}  # store key -> (model, set key, instance)
        self._clients: dict[tuple[str, str, str], Client] = {}
        self._task: asyncio.Task[None] | None = None
        self._watch: Any = None
        self._lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.on_change: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._watch = await self.runtime.store.watch(registry.models_prefix(self.namespace))
        self._task = supervise("model card follower", self._follow).task

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in self._clients.values():
            await client.close()
        for sets in self.sets.values():
            for ws in sets.values():
                await _close_engine(ws.engine)

    async def _follow(self) -> None:
        assert self._watch is not None
        async for event in self._watch:
            try:
                if event.kind == "put" and event.value is not None:
                    await self._on_put(event.key, event.value)
                else:
                    await self._on_delete(event.key)
            except Exception:
                logger.exception("model watcher: failed to apply %s %s", event.kind, event.key)
            self.changed.set()
            for cb in self.on_change:
                cb()

    async def _on_put(self, key: str, raw: bytes) -> None:
        try:
            entry = registry.decode_model(raw)
            card = msgspec.convert(entry.card, ModelDeploymentCard)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("ignoring malformed model card %s: %s", key, exc)
            return
        if self.namespace is not None and entry.namespace != self.namespace:
            return
        prefill = "prefill" in card.model_type
        set_key = f"{entry.namespace}:prefill" if prefill else entry.namespace
        checksum = card.checksum()
        async with self._lock:
            sets = self.sets.setdefault(card.name, {})
            ws = sets.get(set_key)
            if ws is not None and ws.checksum != checksum:
                logger.error(
                    "rejecting worker %x for model %r: its card differs from the %d worker(s) already serving "
                    "it in namespace %r (use a new namespace for a rolling update)",
                    entry.instance_id, card.name, len(ws.instances), entry.namespace)
                return
            if ws is None:
                ep = (entry.namespace, entry.component, entry.endpoint)
                try:
                    # The worker's model_path may be on another host: load from a verified local copy.
                    card = await localize_card(card, self.runtime.store)
                except Exception:
                    logger.exception("cannot load the model files of %r (worker %x)", card.name, entry.instance_id)
                    if not sets:
                        del self.sets[card.name]
                    return
                ws = WorkerSet(entry.namespace, card.name, prefill, card, checksum, ep)
                ws.client = await self._client(ep)
                try:
                    ws.engine = await self.engine_factory(ws)
                except Exception:
                    logger.exception("cannot build an engine for model %r", card.name)
                    if not sets:
                        del self.sets[card.name]
                    return
                sets[set_key] = ws
                logger.info("model %r added (namespace %s, %s)", card.name, entry.namespace,
                            ",".join(card.model_type))
            ws.instances.add(entry.instance_id)
            ws.runtime_configs[entry.instance_id] = card.runtime_config
            self._by_key[key] = (card.name, set_key, entry.instance_id)

    async def _on_delete(self, key: str) -> None:
        async with self._lock:
            found = self._by_key.pop(key, None)
            if found is None:
                return
            model, set_key, iid = found
            sets = self.sets.get(model, {})
            ws = sets.get(set_key)
            if ws is None:
                return
            ws.instances.discard(iid)
            ws.runtime_configs.pop(iid, None)
            if not ws.instances:
                del sets[set_key]
                await _close_engine(ws.engine)
                # The endpoint's client (its discovery watch and listeners) goes with its last set.
                if not any(other.endpoint == ws.endpoint for other in self.all_sets()):
                    client = self._clients.pop(ws.endpoint, None)
                    if client is not None:
                        await client.close()
                logger.info("worker set %s of model %r removed (no workers left)", set_key, model)
                if not sets:
                    del self.sets[model]
                    logger.info("model %r removed", model)

    async def _client(self, ep: tuple[str, str, str]) -> Client:
        client = self._clients.get(ep)
        if client is None:
            client = await self.runtime.namespace(ep[0]).component(ep[1]).endpoint(ep[2]).client(LLMEngineOutput, merge_outputs)
            self._clients[ep] = client
        return client

    # -- queries ---------------------------------------------------------------------------------

    def model_names(self, model_type: str | None = None) -> list[str]:
        out = []
        for name, sets in self.sets.items():
            if any(not ws.prefill and (model_type is None or model_type in ws.card.model_type)
                   for ws in sets.values()):
                out.append(name)
        return sorted(out)

    def has_type(self, model_type: str) -> bool:
        return bool(self.model_names(model_type))

    def worker_set(self, model: str, model_type: str | None = None) -> WorkerSet:
        """A serving set for ``model``, chosen at random weighted by worker count (rolling updates)."""
        sets = self.sets.get(model)
        if not sets:
            raise errors.NotFound(f"model '{model}' not found")
        usable = [ws for ws in sets.values() if not ws.prefill and ws.instances
                  and (model_type is None or model_type in ws.card.model_type)]
        if not usable:
            if model_type is not None and not any(model_type in ws.card.model_type for ws in sets.values()):
                raise errors.NotFound(f"model '{model}' does not support {model_type}")
            raise errors.Unavailable(f"model '{model}' is temporarily unavailable")
        if len(usable) == 1:
            return usable[0]
        return random.choices(usable, weights=[len(ws.instances) for ws in usable])[0]

    def prefill_set(self, ws: WorkerSet) -> WorkerSet | None:
        """The prefill workers serving ``ws``'s model in its namespace, if any are registered."""
        found = self.sets.get(ws.model, {}).get(f"{ws.namespace}:prefill")
        return found if found is not None and found.instances else None

    def all_sets(self) -> list[WorkerSet]:
        return [ws for sets in self.sets.values() for ws in sets.values()]


async def _close_engine(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            res = close()
            if asyncio.iscoroutine(res):
                await res
