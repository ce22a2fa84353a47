"""Worker side of KV routing: publish RouterEvents, and bridge engines' native ZMQ KV event streams.

vLLM and SGLang publish ``msgpack([ts, [events], dp_rank])`` on a ZMQ PUB socket (reference §2.2),
events tagged ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` either as maps with a
``type`` key or as msgspec tagged arrays (tag first). :func:`convert_batch` turns one batch into
RouterEvents — computing ``tokens_hash`` from the block's tokens with the router's hashing rules —
and :class:`ZmqKvEventBridge` does it continuously for a real engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from dynamo.kv_router.hashing import compute_block_hashes, to_u64
from dynamo.kv_router.protocols import KvCacheEvent, KvCleared, KvRemoved, KvStored, RouterEvent, StoredBlock
from dynamo.runtime.tasks import SupervisedTask, spawn, supervise

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
    """Subscribes to an engine's ZMQ KV event socket and republishes RouterEvents.

    Either connects to an engine that binds its PUB socket (``endpoint``), or — :meth:`bind`, called
    before the engine starts — binds a SUB socket on loopback that the engine's PUB connects to. The
    second way takes a port from the kernel (no race with other processes picking ports) and never
    listens beyond this host.
    """

    def __init__(self, endpoint: str | None, worker_id: int, publish: Callable[[RouterEvent], Any],
                 block_size: int | None = None, topic: bytes = b"") -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.publish = publish
        self.block_size = block_size
        self.topic = topic
        self.ids = EventIds()
        self.converted = 0
        self.invalid = 0
        self._task: SupervisedTask | None = None
        self._sock: Any = None
        self._bound: list[str] = []  # endpoints bind() took, re-bound if the socket must be reopened
        self._decoder = msgspec.msgpack.Decoder()

    def bind(self, host: str = "127.0.0.1", ranks: int = 1) -> str:
        """Bind the SUB side; returns the endpoint for the engine's PUB to connect to.

        An engine with ``ranks`` data-parallel ranks publishes rank ``r`` on port ``base + r``, so
        that many consecutive ports are bound.
        """
        import random

        import zmq
        import zmq.asyncio

        sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        if ranks == 1:
            sock.bind(f"tcp://{host}:0")
            self.endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            self._bound = [self.endpoint]
        else:
            for _ in range(100):
                base = random.randint(20000, 60000 - ranks)
                bound: list[str] = []
                try:
                    for r in range(ranks):
                        sock.bind(f"tcp://{host}:{base + r}")
                        bound.append(f"tcp://{host}:{base + r}")
                except zmq.ZMQError:
                    for ep in bound:
                        sock.unbind(ep)
                    continue
                self.endpoint = bound[0]
                self._bound = bound
                break
            else:
                sock.close(linger=0)
                raise OSError(f"no {ranks} consecutive free ports on {host} for KV events")
        self._sock = sock
        return str(self.endpoint)

    def start(self) -> None:
        # Supervised: a failure restarts the receive loop after a backoff instead of ending it.
        self._task = supervise("kv event bridge (zmq receive)", self._run)

    async def close(self) -> None:
        if self._task is not None:
            await self._task.stop()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _run(self) -> None:
        import zmq
        import zmq.asyncio

        sock = self._sock
        if sock is None:
            sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.SUBSCRIBE, self.topic)
            for ep in self._bound:
                sock.bind(ep)
            if not self._bound:
                sock.connect(self.endpoint)
            self._sock = sock
        try:
            while True:
                frames = await sock.recv_multipart()
                self.handle(frames[-1])
        except zmq.ZMQError:
            # The socket itself failed: reopen it (same endpoints) when the supervisor restarts us.
            sock.close(linger=0)
            self._sock = None
            raise

    def handle(self, payload: bytes) -> list[RouterEvent]:
        try:
            events = convert_batch(self._decoder.decode(payload), self.worker_id, self.ids, self.block_size)
        except Exception as exc:  # any malformed batch (OverflowError, AttributeError, ...) is bad data
            self.invalid += 1
            logger.warning("skipping malformed engine KV event batch: %s: %s", type(exc).__name__, exc)
            return []
        for event in events:
            result = self.publish(event)
            if asyncio.iscoroutine(result):
                spawn(result, "kv event bridge publish")
        self.converted += len(events)
        return events


class WorkerPublisher:
    """What an engine worker publishes about itself, on its namespace's event plane.

    * ``kv-events``: RouterEvents, also applied to a local index of this worker's own cache so that
      :meth:`kv_dump` can answer a router that missed some (reference §2.7);
    * ``kv_metrics``: KV blocks in use per dp rank, when it changes (busy detection, load routing);
    * ``forward-pass-metrics``: per-iteration engine stats summed over short windows.

    Every method is synchronous and never blocks the engine: publishes are fired as tasks that this
    object keeps referenced until they finish. Without an event plane it still keeps the local index.
    """

    def __init__(self, worker_id: int, kv_pub: Any = None, load_pub: Any = None, fpm_pub: Any = None) -> None:
        from dynamo.kv_router.indexer import RadixTree
        from dynamo.llm.forward_pass import ForwardPassWindow

        self.worker_id = worker_id
        self._kv_pub = kv_pub
        self._load_pub = load_pub
        self._fpm_pub = fpm_pub
        self._index = RadixTree()
        self._last_ids: dict[int, int] = {}
        self._last_used: dict[int, int] = {}
        self._window = ForwardPassWindow(worker_id)
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def create(cls, runtime: Any, namespace: str, component: str, worker_id: int) -> WorkerPublisher:
        if getattr(runtime, "durable_kv_events", False):
            # JetStream, acknowledged and retried: a router replaying the stream misses nothing.
            # Errors here are the operator's to see (no NATS with --durable-kv-events), not skipped.
            from dynamo.kv_router.durable import DurableKvPublisher

            kv_pub: Any = await DurableKvPublisher.create(runtime, namespace, component, worker_id)
        else:
            kv_pub = None
        try:
            plane = runtime.event_plane()
            return cls(
                worker_id,
                kv_pub or await plane.publisher(namespace, component, "kv-events", publisher_id=worker_id),
                await plane.publisher(namespace, None, "kv_metrics", publisher_id=worker_id),
                await plane.publisher(namespace, component, "forward-pass-metrics", publisher_id=worker_id),
            )
        except Exception as exc:
            logger.warning("event plane unavailable (%s): KV events and load metrics will not be published", exc)
            return cls(worker_id)

    def _fire(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def kv_events(self, events: Sequence[RouterEvent]) -> None:
        for ev in events:
            self._index.apply_event(ev)
            self._last_ids[ev.event.dp_rank] = ev.event.event_id
            if self._kv_pub is not None:
                self._fire(self._kv_pub.publish(ev.to_wire()))

    def kv_event(self, event: RouterEvent) -> None:
        self.kv_events((event,))

    def load(self, dp_rank: int, kv_used_blocks: int, *, force: bool = False) -> None:
        """Report KV blocks in use on ``dp_rank`` (only when it changed, unless ``force``)."""
        if not force and self._last_used.get(dp_rank) == kv_used_blocks:
            return
        self._last_used[dp_rank] = kv_used_blocks
        if self._load_pub is not None:
            from dynamo.kv_router.protocols import ActiveLoad

            self._fire(self._load_pub.publish(
                ActiveLoad(worker_id=self.worker_id, dp_rank=dp_rank, kv_used_blocks=kv_used_blocks)))

    def forward_pass(self, dp_rank: int, now: float, **fields: Any) -> None:
        """Account one engine iteration (see :meth:`ForwardPassWindow.add` for the fields)."""
        report = self._window.add(dp_rank, now, **fields)
        if report is not None and self._fpm_pub is not None:
            self._fire(self._fpm_pub.publish(report))

    def snapshot(self) -> dict[str, Any]:
        """The ``kv_dump`` reply: cached blocks as stored events plus the last event id per dp rank."""
        return {"last_event_ids": dict(self._last_ids), "events": [e.to_wire() for e in self._index.dump_events()]}

    async def kv_dump(self, request: Any, ctx: Any) -> Any:
        yield self.snapshot()
