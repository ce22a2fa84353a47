"""Non-KV routing of one worker set's requests: round-robin, random, power-of-two, least-loaded, direct.

Tracks in-flight requests per instance (for power-of-two and least-loaded) and honours a busy
filter: when every instance is busy the request is rejected with ``ResourceExhausted`` (HTTP 503)
rather than queued behind overloaded workers. If the chosen instance cannot be reached another one is
tried, so a worker that vanished between selection and dispatch costs no request.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from dynamo.runtime import errors
from dynamo.runtime.client import Client

ROUTER_MODES = ("round-robin", "random", "power-of-two", "least-loaded", "direct", "kv")


class PushRouter:
    def __init__(self, client: Client, mode: str = "round-robin",
                 eligible: Callable[[], set[int] | None] | None = None) -> None:
        if mode not in ROUTER_MODES:
            raise errors.ConfigError(f"unknown router mode {mode!r}; expected one of {', '.join(ROUTER_MODES)}")
        self.client = client
        self.mode = mode
        self._eligible = eligible
        self.inflight: dict[int, int] = {}
        self.busy: set[int] = set()
        self._rr = 0
        self._rng = random.Random()

    def candidates(self) -> list[int]:
        ids = self.client.instance_ids()
        allowed = self._eligible() if self._eligible is not None else None
        if allowed is not None:
            ids = [i for i in ids if i in allowed]
        return ids

    def _free(self, ids: list[int]) -> list[int]:
        if not self.busy:
            return ids
        free = [i for i in ids if i not in self.busy]
        if not free:
            raise errors.ResourceExhausted("All workers are busy, please retry later")
        return free

    def select(self, exclude: set[int] | None = None) -> int:
        ids = self.candidates()
        if exclude:
            ids = [i for i in ids if i not in exclude]
        if not ids:
            raise errors.Unavailable("no workers available for this model")
        ids = self._free(ids)
        mode = self.mode
        if mode == "direct":
            raise errors.InvalidArgument("router mode 'direct' needs the x-worker-instance-id header")
        if mode == "random":
            return self._rng.choice(ids)
        if mode == "power-of-two":
            if len(ids) == 1:
                return ids[0]
            a, b = self._rng.sample(ids, 2)
            return a if self.inflight.get(a, 0) <= self.inflight.get(b, 0) else b
        if mode == "least-loaded":
            low = min(self.inflight.get(i, 0) for i in ids)
            return self._rng.choice([i for i in ids if self.inflight.get(i, 0) == low])
        self._rr += 1
        return ids[self._rr % len(ids)]

    async def generate(self, request: Any, headers: dict[str, str] | None = None,
                       instance_id: int | None = None) -> tuple[int, AsyncIterator[Any]]:
        """Dispatch and return ``(instance_id, stream)``; the stream's end releases the in-flight slot."""
        if instance_id is not None:
            if instance_id not in self.client.instance_ids():
                raise errors.NotFound(f"worker instance {instance_id} is not available")
            stream = await self.client.direct(request, instance_id, headers)
            return instance_id, self._track(instance_id, stream)
        tried: set[int] = set()
        while True:
            iid = self.select(tried)
            try:
                stream = await self.client.direct(request, iid, headers)
            except errors.CannotConnect:
                tried.add(iid)
                continue
            return iid, self._track(iid, stream)

    async def _track(self, iid: int, stream: Any) -> AsyncIterator[Any]:
        self.inflight[iid] = self.inflight.get(iid, 0) + 1
        try:
            async for item in stream:
                yield item
        finally:
            n = self.inflight.get(iid, 1) - 1
            if n <= 0:
                self.inflight.pop(iid, None)
            else:
                self.inflight[iid] = n
            if not stream._done:
                stream.cancel(kill=True)
