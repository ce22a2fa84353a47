"""In-process routing: the ``PushRouter`` interface over engines living in this process.

``dynamo-run in=http out=mocker`` runs frontend, router and engine in one process with no sockets
between them. ``ModelEngine`` only needs ``generate(request, headers, instance_id) -> (instance_id,
stream)`` and a ``busy`` set from its router, so this class offers exactly that and calls each engine's
``generate(request, RequestContext)`` directly. Closing the returned stream early (client gone, stop
string, Ctrl-C) kills the request context and closes the engine's generator, so the engine frees the
request's resources at once, as a remote worker would on a ``kill`` from the request plane.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from dynamo.runtime import errors
from dynamo.runtime.context import RequestContext

LOCAL_ROUTER_MODES = ("round-robin", "random", "power-of-two", "least-loaded", "kv")


class LocalEngine(Protocol):
    def generate(self, request: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        """Stream the outputs of one request; stop early once ``ctx`` is stopped."""
        ...


class LocalRouter:
    """Routes over ``{instance_id: engine}`` held in this process.

    Modes other than ``random`` pick round-robin: with the usual single local engine every mode
    picks the same one, and for a few engines in one process queue depth is what ``least-loaded``
    and ``power-of-two`` would look at, so those two use the in-flight count.
    """

    def __init__(self, engines: Mapping[int, LocalEngine], mode: str = "round-robin") -> None:
        if not engines:
            raise errors.ConfigError("a local router needs at least one engine")
        if mode not in LOCAL_ROUTER_MODES:
            raise errors.ConfigError(
                f"unknown router mode {mode!r}; expected one of {', '.join(LOCAL_ROUTER_MODES)}")
        self.engines = dict(engines)
        self.mode = mode
        self.inflight: dict[int, int] = {}
        self.busy: set[int] = set()
        self._ids = sorted(self.engines)
        self._rr = itertools.count()
        self._rng = random.Random()

    def instance_ids(self) -> list[int]:
        return list(self._ids)

    def select(self) -> int:
        ids = self._ids
        if self.busy:
            ids = [i for i in ids if i not in self.busy]
            if not ids:
                raise errors.ResourceExhausted("All workers are busy, please retry later")
        if len(ids) == 1:
            return ids[0]
        if self.mode == "random":
            return self._rng.choice(ids)
        if self.mode in ("least-loaded", "power-of-two"):
            low = min(self.inflight.get(i, 0) for i in ids)
            return next(i for i in ids if self.inflight.get(i, 0) == low)
        return ids[next(self._rr) % len(ids)]

    async def generate(self, request: Any, headers: dict[str, str] | None = None,
                       instance_id: int | None = None) -> tuple[int, AsyncIterator[Any]]:
        """Start ``request`` on one engine; returns ``(instance_id, stream)`` like ``PushRouter``."""
        if instance_id is not None:
            if instance_id not in self.engines:
                raise errors.NotFound(f"worker instance {instance_id} is not available")
            iid = instance_id
        else:
            iid = self.select()
        hdrs = dict(headers or {})
        rid = getattr(request, "request_id", None) or hdrs.get("request-id")
        ctx = RequestContext(rid, hdrs)
        return iid, self._run(iid, self.engines[iid], request, ctx)

    async def _run(self, iid: int, engine: LocalEngine, request: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        self.inflight[iid] = self.inflight.get(iid, 0) + 1
        stream = engine.generate(request, ctx)
        finished = False
        try:
            async for item in stream:
                yield item
            finished = True
        finally:
            if not finished:
                # The consumer let go before the engine finished: tell the engine, then unwind it.
                ctx.kill()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            n = self.inflight.get(iid, 1) - 1
            if n <= 0:
                self.inflight.pop(iid, None)
            else:
                self.inflight[iid] = n

    async def close(self) -> None:
        """Engines are owned by whoever built them; nothing to release here."""
