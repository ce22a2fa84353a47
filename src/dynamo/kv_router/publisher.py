"""Worker side of KV routing: publish RouterEvents, and bridge engines' native ZMQ KV event streams.

vLLM and SGLang publish ``msgpack([ts, [events], dp_rank])`` on a ZMQ PUB socket (reference §2.2),
events tagged ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` either as maps with a
``type`` key or as msgspec tagged arrays (tag first). :func:`convert_batch` turns one batch into
RouterEvents — computing ``tokens_hash`` from the block's tokens with the router's hashing rules —
and :class:`ZmqKvEventBridge` does it continuously for a real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from dynamo.kv_router.hashing import compute_block_hashes, to_u64
from dynamo.kv_router.protocols import KvCacheEvent, KvCleared, KvRemoved, KvStored, RouterEvent, StoredBlock

logger = logging.getLogger(__name__)

_TIERS = {
    "GPU": "device", "DEVICE": "device", "CPU_PINNED": "host_pinned", "CPU_TIER1": "host_pinned",
    "CPU": "host_pinned", "CPU_TIER2": "disk", "DISK": "disk", "NVME": "disk", "EXTERNAL": "external",
    "NETWORK": "external", "REMOTE": "external", "SHARED": "external",
}
# Field order of vLLM's array-encoded (msgspec ``array_like``) events, after the tag.
_ARRAY_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                    "lora_name"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def storage_tier(medium: Any) -> str:
    return _TIERS.get(str(medium).upper(), "device") if medium else "device"


def _as_map(event: Any) -> dict[str, Any]:
    if isinstance(event, dict):
        return event
    if isinstance(event, (list, tuple)) and event and isinstance(event[0], str):
        names = _ARRAY_FIELDS.get(event[0])
        if names is None:
            raise ValueError(f"unknown KV event type {event[0]!r}")
        return {"type": event[0], **dict(zip(names, event[1:], strict=False))}
    raise ValueError(f"unrecognised KV event {event!r}")


class EventIds:
    """Monotonic event ids per dp rank, as the router expects from each worker."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def next(self, dp_rank: int) -> int:
        n = self._next.get(dp_rank, 0)
        self._next[dp_rank] = n + 1
        return n


def convert_batch(batch: Any, worker_id: int, ids: EventIds, block_size: int | None = None) -> list[RouterEvent]:
    """One engine batch ``[ts, [events], dp_rank]`` → RouterEvents (raises ValueError if malformed)."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("KV event batch must be [ts, [events], dp_rank]")
    dp_rank = int(batch[2]) if len(batch) > 2 and batch[2] is not None else 0
    out: list[RouterEvent] = []
    for raw in batch[1]:
        ev = _as_map(raw)
        kind = ev.get("type")
        tier = storage_tier(ev.get("medium"))
        data: KvStored | KvRemoved | KvCleared
        if kind == "BlockStored":
            hashes = [to_u64(int(h)) for h in ev["block_hashes"]]
            bs = int(ev.get("block_size") or block_size or 0)
            tokens: Sequence[int] = ev.get("token_ids") or []
            if bs <= 0 or len(tokens) < bs * len(hashes):
                raise ValueError("BlockStored needs block_size and the tokens of every block")
            local = compute_block_hashes(tokens[: bs * len(hashes)], bs, ev.get("lora_name"))
            parent = ev.get("parent_block_hash")
            data = KvStored(None if parent is None else to_u64(int(parent)),
                            [StoredBlock(h, t) for h, t in zip(hashes, local, strict=True)])
        elif kind == "BlockRemoved":
            data = KvRemoved([to_u64(int(h)) for h in ev["block_hashes"]])
        elif kind == "AllBlocksCleared":
            data = KvCleared()
        else:
            raise ValueError(f"unknown KV event type {kind!r}")
        out.append(RouterEvent(worker_id, KvCacheEvent(ids.next(dp_rank), data, dp_rank), tier))
    return out


class ZmqKvEventBridge:
    """Subscribes to an engine's ZMQ KV event socket and republishes RouterEvents."""

    def __init__(self, endpoint: str, worker_id: int, publish: Callable[[RouterEvent], Any],
                 block_size: int | None = None, topic: bytes = b"") -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.publish = publish
        self.block_size = block_size
        self.topic = topic
        self.ids = EventIds()
        self.converted = 0
        self.invalid = 0
        self._task: asyncio.Task[None] | None = None
        self._decoder = msgspec.msgpack.Decoder()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        sock.connect(self.endpoint)
        try:
            while True:
                frames = await sock.recv_multipart()
                self.handle(frames[-1])
        finally:
            sock.close(linger=0)

    def handle(self, payload: bytes) -> list[RouterEvent]:
        try:
            events = convert_batch(self._decoder.decode(payload), self.worker_id, self.ids, self.block_size)
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            self.invalid += 1
            logger.warning("skipping malformed engine KV event batch: %s", exc)
            return []
        for event in events:
            result = self.publish(event)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        self.converted += len(events)
        return events
