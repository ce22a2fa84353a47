"""In-process store: every runtime of one process that names the same space shares it."""

from __future__ import annotations

import random

from dynamo.runtime.discovery.store import DEFAULT_TTL_SECS, KeyValueStore, Watch, WatchEvent


class _Space:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.owner: dict[str, int] = {}
        self.watches: list[tuple[str, Watch]] = []

    def notify(self, event: WatchEvent) -> None:
        for prefix, watch in list(self.watches):
            if event.key.startswith(prefix):
                watch.push(event)


_SPACES: dict[str, _Space] = {}


class MemoryStore(KeyValueStore):
    def __init__(self, ttl: float = DEFAULT_TTL_SECS, space: str = "default") -> None:
        super().__init__(ttl)
        self._space = _SPACES.setdefault(space, _Space())
        self._lease = random.getrandbits(63) or 1

    @property
    def lease_id(self) -> int:
        return self._lease

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        space = self._space
        for key in [k for k, o in space.owner.items() if o == self._lease]:
            await self.delete(key)

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        self._space.data[key] = value
        if leased:
            self._space.owner[key] = self._lease
        else:
            self._space.owner.pop(key, None)
        self._space.notify(WatchEvent("put", key, value))

    async def get(self, key: str) -> bytes | None:
        return self._space.data.get(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self._space.data.items() if k.startswith(prefix)}

    async def delete(self, key: str) -> None:
        if self._space.data.pop(key, None) is not None:
            self._space.owner.pop(key, None)
            self._space.notify(WatchEvent("delete", key))

    async def watch(self, prefix: str) -> Watch:
        space = self._space

        def unregister(w: Watch) -> None:
            space.watches[:] = [(p, x) for p, x in space.watches if x is not w]

        watch = Watch(on_close=unregister)
        for key, value in list(space.data.items()):
            if key.startswith(prefix):
                watch.push(WatchEvent("put", key, value))
        space.watches.append((prefix, watch))
        return watch
