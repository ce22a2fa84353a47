"""KV bootstrap rendezvous between a prefill mocker and a decode mocker (reference §3.7).

On the bootstrap path the frontend sends the same ``bootstrap_info`` (host, port, room) to a prefill
worker and a decode worker at once. The prefill worker owns a :class:`BootstrapServer` on that port;
the decode worker connects with :func:`wait_for_kv` and blocks until the prefill side marks the room
complete (its prefill and the simulated transfer are done). Either side may come first: a room is
created by whichever side names it first.

Wire: the decode side sends one JSON line ``{"room": <int>}``; the server answers one JSON line
``{"room": <int>, "status": "ready" | "failed" | "timeout" | "error", ...}`` and closes. Anything other
than ``ready`` tells the decode worker to compute the prompt itself (a local prefill) rather than fail
the request: a prefill worker that died or gave up costs latency, never an error to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from dynamo.llm.protocols.engine import BootstrapInfo

logger = logging.getLogger(__name__)

#: how long a decode worker waits for its room before computing the prompt itself
WAIT_SECS = 60.0
#: the prefill request is dispatched before the decode request, so it normally arrives first; a room
#: no prefill request has claimed within this long never will be (it went to a worker that was leaving)
ANNOUNCE_SECS = 5.0
#: a completed room nobody claimed (its decode request was cancelled) is forgotten after this long
ROOM_TTL_SECS = 120.0
MAX_LINE = 1024


@dataclass
class Room:
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool = False
    created: float = field(default_factory=time.monotonic)
    expected: bool = False  # the prefill side has announced it


class BootstrapServer:
    """The prefill worker's side: rooms keyed by ``bootstrap_room``, served on one TCP port."""

    def __init__(self, host: str, port: int, *, wait_secs: float = WAIT_SECS,
                 announce_secs: float = ANNOUNCE_SECS, room_ttl_secs: float = ROOM_TTL_SECS) -> None:
        self.host = host
        self.port = port
        self.wait_secs = wait_secs
        self.announce_secs = announce_secs
        self.room_ttl_secs = room_ttl_secs
        self.rooms: dict[int, Room] = {}
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Answer every waiting decode worker "failed" (they prefill locally), then stop listening."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for room in self.rooms.values():
            room.done.set()
        self.rooms.clear()
        if self._server is not None:
            self._server.close()
            # Let the waiters send their answers; then drop whatever connection is left.
            for _ in range(100):
                if not self._writers:
                    break
                await asyncio.sleep(0.01)
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _room(self, room_id: int) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = Room()
        return room

    def expect(self, room_id: int) -> None:
        """The prefill request for ``room_id`` has arrived here."""
        self._room(room_id).expected = True

    def complete(self, room_id: int, ok: bool = True) -> None:
        """The room's KV is ready (``ok``), or will never be (the prefill failed)."""
        room = self._room(room_id)
        room.ok = ok
        room.done.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(self.room_ttl_secs / 4, 0.05))
            cutoff = time.monotonic() - self.room_ttl_secs
            for rid in [r for r, room in self.rooms.items() if room.created < cutoff]:
                self.rooms.pop(rid, None).done.set()  # type: ignore[union-attr]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        room_id: int | None = None
        self._writers.add(writer)
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
                msg = json.loads(line)
                room_id = msg["room"]
                if not isinstance(room_id, int) or isinstance(room_id, bool):
                    raise TypeError("room must be an integer")
            except (ValueError, KeyError, TypeError, asyncio.TimeoutError, asyncio.LimitOverrunError) as exc:
                reply = {"status": "error", "message": f"bad bootstrap request: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                return
            room = self._room(room_id)
            status = await self._await_room(room)
            # The room is claimed (or given up on): forget it, whatever the outcome.
            if self.rooms.get(room_id) is room:
                del self.rooms[room_id]
            writer.write(json.dumps({"room": room_id, "status": status}).encode() + b"\n")
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    async def _await_room(self, room: Room) -> str:
        if self.closing:
            return "failed"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_secs
        announce_by = loop.time() + self.announce_secs
        while not room.done.is_set():
            now = loop.time()
            limit = deadline if room.expected else min(deadline, announce_by)
            if now >= limit:
                return "timeout"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(room.done.wait(), min(limit - now, 0.5))
        return "ready" if room.ok else "failed"


async def wait_for_kv(info: BootstrapInfo, timeout: float = WAIT_SECS + 5.0) -> tuple[bool, str]:
    """The decode worker's side: ``(True, "ready")`` once the room's KV has arrived, else ``(False, why)``."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(info.bootstrap_host, info.bootstrap_port,
                                                           limit=MAX_LINE)
            writer.write(json.dumps({"room": info.bootstrap_room}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        if not line:
            return False, "prefill worker closed the connection"
        reply = json.loads(line)
        status = reply.get("status", "error") if isinstance(reply, dict) else "error"
        return status == "ready", str(status)
    except (OSError, ValueError, TimeoutError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
