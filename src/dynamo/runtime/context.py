"""Per-request context handed to endpoint handlers: id, headers, and stop/kill signals."""

from __future__ import annotations

import asyncio
import uuid


class RequestContext:
    """``stop`` asks the handler to finish early (graceful); ``kill`` aborts it.

    A handler checks :meth:`is_stopped` between items, or awaits :meth:`stopped` to race its work.
    """

    __slots__ = ("_killed", "_stopped", "_waiter", "headers", "id")

    def __init__(self, request_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.id = request_id or uuid.uuid4().hex
        self.headers = headers or {}
        self._stopped = False
        self._killed = False
        self._waiter: asyncio.Future[None] | None = None

    def stop(self) -> None:
        self._stopped = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def kill(self) -> None:
        self._killed = True
        self.stop()

    def is_stopped(self) -> bool:
        return self._stopped

    def is_killed(self) -> bool:
        return self._killed

    async def stopped(self) -> None:
        """Wait until the request is stopped or killed."""
        if self._stopped:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)
