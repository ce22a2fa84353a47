"""The client half every request plane shares: the items of one request's response stream.

A transport feeds frames (``ack``, ``data``, ``end``, ``err``) to :meth:`ResponseStream._on_frame` and
fails the stream with :meth:`ResponseStream._finish` when its peer is lost. The stream's owner (``conn``)
needs only ``send(frame)`` (for stop/kill) and a ``streams`` dict the stream removes itself from.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Protocol

from dynamo.runtime import errors
from dynamo.runtime.request_plane.codec import ACK, DATA, END, ERR, KILL, STOP, Frame


class StreamOwner(Protocol):
    streams: dict[int, Any]

    def send(self, frame: Frame) -> None: ...


class ResponseStream:
    """The items of one request's response; iterate with ``async for``; ``cancel()`` to abandon."""

    __slots__ = ("_ack", "_conn", "_decode", "_done", "_error", "_items", "_merge", "_peeked", "_waiter",
                 "cancelled", "sid")

    def __init__(self, conn: StreamOwner, sid: int, decode: Callable[[bytes], Any],
                 merge: Callable[[Any, Any], Any] | None = None) -> None:
        self._conn = conn
        self.sid = sid
        self._decode = decode
        self._merge = merge
        self._peeked: Any = None
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done = False
        self._error: errors.DynamoError | None = None
        self.cancelled = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        t = frame.t
        if t == DATA:
            self._items.append(frame.body)
            self._wake()
        elif t == ACK:
            if not self._ack.done():
                self._ack.set_result(None)
        elif t == END:
            self._finish(None)
        elif t == ERR:
            self._finish(errors.from_wire(frame.error))

    def _finish(self, error: errors.DynamoError | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self._ack.done():
            if error is not None:
                self._ack.set_exception(error)
            else:
                self._ack.set_result(None)
        self._conn.streams.pop(self.sid, None)
        self._wake()

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._peeked is not None:
                item, self._peeked = self._peeked, None
            elif self._items:
                item = self._decode(self._items.popleft())
            else:
                item = None
            if item is not None:
                merge = self._merge
                if merge is not None:
                    # Items that piled up while the consumer was busy are handed over as one.
                    items = self._items
                    while items:
                        nxt = self._decode(items.popleft())
                        merged = merge(item, nxt)
                        if merged is None:
                            self._peeked = nxt
                            break
                        item = merged
                return item
            if self._done:
                if self._error is not None and not self.cancelled:
                    err, self._error = self._error, None
                    raise err
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def cancel(self, kill: bool = False) -> None:
        """Ask the server to stop (graceful) or kill the stream; further items are discarded."""
        if self._done:
            return
        self.cancelled = True
        self._conn.send(Frame(KILL if kill else STOP, self.sid))
        if kill:
            self._items.clear()
            self._finish(None)
