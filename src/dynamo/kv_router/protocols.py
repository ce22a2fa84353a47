"""KV-cache events and load reports exchanged between workers and routers (reference §2.2, §1.7).

On the wire a ``RouterEvent`` is the reference's externally tagged JSON/msgpack shape::

    {"worker_id": u64, "storage_tier": "device",
     "event": {"event_id": u64, "dp_rank": u32,
               "data": {"stored": {"parent_hash": u64|None, "blocks": [{"block_hash", "tokens_hash"}]}}
                     | {"removed": {"block_hashes": [u64]}} | "cleared"}}

``to_wire``/``from_wire`` convert between that shape and the typed structs used in-process.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dynamo.kv_router.hashing import to_u64


class StoredBlock(msgspec.Struct, frozen=True, array_like=True):
    block_hash: int  # sequence (external) hash
    tokens_hash: int  # local block hash


class KvStored(msgspec.Struct, frozen=True):
    parent_hash: int | None
    blocks: list[StoredBlock]


class KvRemoved(msgspec.Struct, frozen=True):
    block_hashes: list[int]


class KvCleared(msgspec.Struct, frozen=True):
    pass


KvCacheEventData = KvStored | KvRemoved | KvCleared


class KvCacheEvent(msgspec.Struct, frozen=True):
    event_id: int
    data: KvCacheEventData
    dp_rank: int = 0


class RouterEvent(msgspec.Struct, frozen=True):
    worker_id: int
    event: KvCacheEvent
    storage_tier: str = "device"

    def to_wire(self) -> dict[str, Any]:
        data = self.event.data
        wire_data: Any
        if isinstance(data, KvStored):
            wire_data = {
                "stored": {
                    "parent_hash": data.parent_hash,
                    "blocks": [{"block_hash": b.block_hash, "tokens_hash": b.tokens_hash} for b in data.blocks],
                }
            }
        elif isinstance(data, KvRemoved):
            wire_data = {"removed": {"block_hashes": list(data.block_hashes)}}
        else:
            wire_data = "cleared"
        return {
            "worker_id": self.worker_id,
            "storage_tier": self.storage_tier,
            "event": {"event_id": self.event.event_id, "dp_rank": self.event.dp_rank, "data": wire_data},
        }

    @classmethod
    def from_wire(cls, obj: Any) -> RouterEvent:
        """Parse the wire shape; raises ``ValueError`` on anything malformed."""
        try:
            ev = obj["event"]
            raw = ev["data"]
            data: KvCacheEventData
            if raw == "cleared" or (isinstance(raw, dict) and "cleared" in raw):
                data = KvCleared()
            elif "stored" in raw:
                st = raw["stored"]
                parent = st.get("parent_hash")
                data = KvStored(
                    parent_hash=None if parent is None else to_u64(int(parent)),
                    blocks=[
                        StoredBlock(to_u64(int(b["block_hash"])), to_u64(int(b["tokens_hash"])))
                        for b in st["blocks"]
                    ],
                )
            elif "removed" in raw:
                data = KvRemoved([to_u64(int(h)) for h in raw["removed"]["block_hashes"]])
            else:
                raise ValueError(f"unknown KV event data {raw!r}")
            return cls(
                worker_id=int(obj["worker_id"]),
                event=KvCacheEvent(event_id=int(ev["event_id"]), data=data, dp_rank=int(ev.get("dp_rank") or 0)),
                storage_tier=str(obj.get("storage_tier") or "device"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed RouterEvent: {exc}") from exc


class _WireBlock(msgspec.Struct):
    block_hash: int
    tokens_hash: int


class _WireStored(msgspec.Struct):
    blocks: list[_WireBlock]
    parent_hash: int | None = None


class _WireRemoved(msgspec.Struct):
    block_hashes: list[int]


class _WireData(msgspec.Struct, omit_defaults=True):
    stored: _WireStored | None = None
    removed: _WireRemoved | None = None
    cleared: Any = None


class _WireEvent(msgspec.Struct):
    event_id: int
    data: str | _WireData
    dp_rank: int | None = 0


class _WireRouterEvent(msgspec.Struct):
    worker_id: int
    event: _WireEvent
    storage_tier: str | None = "device"


_wire_decoder = msgspec.msgpack.Decoder(_WireRouterEvent)


def decode_router_event(payload: bytes) -> RouterEvent:
    """Decode a msgpack ``RouterEvent`` payload straight into typed structs (the router's hot path).

    Raises ``ValueError`` on anything malformed, like :meth:`RouterEvent.from_wire`.
    """
    try:
        w = _wire_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed RouterEvent: {exc}") from exc
    raw = w.event.data
    data: KvCacheEventData
    if isinstance(raw, str):
        if raw != "cleared":
            raise ValueError(f"unknown KV event data {raw!r}")
        data = KvCleared()
    elif raw.stored is not None:
        st = raw.stored
        parent = st.parent_hash
        data = KvStored(None if parent is None else parent & _MASK,
                        [StoredBlock(b.block_hash & _MASK, b.tokens_hash & _MASK) for b in st.blocks])
    elif raw.removed is not None:
        data = KvRemoved([h & _MASK for h in raw.removed.block_hashes])
    elif raw.cleared is not None:
        data = KvCleared()
    else:
        raise ValueError("KV event data is empty")
    return RouterEvent(w.worker_id, KvCacheEvent(w.event.event_id, data, w.event.dp_rank or 0),
                       w.storage_tier or "device")


_MASK = (1 << 64) - 1


class ActiveLoad(msgspec.Struct, omit_defaults=True):
    """Load report on the ``kv_metrics`` topic: workers send ``kv_used_blocks``, routers the rest."""

    worker_id: int
    dp_rank: int = 0
    active_decode_blocks: int | None = None
    active_prefill_tokens: int | None = None
    kv_used_blocks: int | None = None
