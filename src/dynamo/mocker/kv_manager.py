"""Simulated vLLM KV-cache block manager (reference §3.4).

Blocks live in one of two pools that together never exceed ``num_gpu_blocks``:

* **active** — ``block id -> refcount``; blocks some running sequence holds.
* **inactive** — an LRU of cached full blocks nobody holds; they stay reusable (prefix caching) until a
  new allocation needs their slot, at which point the least recently freed one is evicted and a
  ``removed`` event is emitted.

Block identity: a full block is identified by its chained sequence hash (``dynamo.kv_router.hashing``,
seed 1337), so its ``stored`` event matches what the router computes from the prompt; the growing tail
of a sequence is a *partial* block with a private negative id, promoted to its sequence hash once the
tokens filling it have been computed. With prefix caching disabled every block gets a private id, the
inactive pool is unused and no events are emitted (nothing is reusable, so there is nothing to route
on — upstream likewise disables KV event publishing without prefix caching).

Events are ``RouterEvent``s with a per-manager (= per dp rank) monotonically increasing ``event_id``;
they go to ``event_sink`` when one is given, otherwise to an outbox drained with :meth:`drain_events`.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import repeat

import xxhash

from dynamo.kv_router.hashing import XXH3_SEED, compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.protocols import KvCacheEvent, KvRemoved, KvStored, RouterEvent, StoredBlock

EventSink = Callable[[RouterEvent], None]

_xxh3 = xxhash.xxh3_64_intdigest
_pack_pair = struct.Struct("<QQ").pack
_LITTLE = sys.byteorder == "little"


class KvSequence:
    """The KV footprint of one request: its tokens, their block hashes and the blocks it holds.

    ``blocks[:num_full]`` are full blocks (sequence-hash ids with prefix caching); a trailing
    ``blocks[num_full]`` (if any) is the partial tail. Hashes are computed lazily, a block at a time,
    so decode pays for hashing only when a block fills.
    """

    __slots__ = ("blocks", "local_hashes", "num_full", "seq_hashes", "tokens")

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.local_hashes: list[int] = []
        self.seq_hashes: list[int] = []
        self.blocks: list[int] = []
        self.num_full = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def ensure_hashes(self, num_blocks: int, block_size: int) -> None:
        """Make sure the first ``num_blocks`` full blocks have local and sequence hashes."""
        have = len(self.seq_hashes)
        if num_blocks <= have:
            return
        if num_blocks == have + 1 and have and _LITTLE:
            # One block filled by decode (the common case): the two hashes of
            # compute_block_hashes/compute_seq_hashes without their per-call list work.
            start = have * block_size
            h = _xxh3(array("I", self.tokens[start : start + block_size]).tobytes(), XXH3_SEED)
            self.local_hashes.append(h)
            self.seq_hashes.append(_xxh3(_pack_pair(self.seq_hashes[-1], h), XXH3_SEED))
            return
        local = compute_block_hashes(self.tokens[have * block_size : num_blocks * block_size], block_size)
        parent = self.seq_hashes[-1] if have else None
        self.local_hashes.extend(local)
        self.seq_hashes.extend(compute_seq_hashes(local, parent))


class KvManager:
    """Active/inactive block pools with prefix caching and KV event emission for one dp rank."""

    #: take the fast paths — bulk allocation of wholly uncached blocks, a decode step's new or filled
    #: tail block — instead of the general one (tests turn them off to compare)
    bulk_fresh = True

    def __init__(
        self,
        num_gpu_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        dp_rank: int = 0,
        worker_id: int = 0,
        event_sink: EventSink | None = None,
    ) -> None:
        if num_gpu_blocks <= 0:
            raise ValueError("num_gpu_blocks must be positive")
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.dp_rank = dp_rank
        #: the worker id stamped on events; the engine sets it once the runtime has assigned one
        self.worker_id = worker_id
        self.event_sink = event_sink
        self.active: dict[int, int] = {}
        self.inactive: OrderedDict[int, None] = OrderedDict()
        self._outbox: list[RouterEvent] = []
        self._next_event_id = 0
        self._next_private_id = -1

    # ----------------------------------------------------------------------------------------- queries

    @property
    def num_active_blocks(self) -> int:
        """Blocks held by running sequences: the ``kv_used_blocks`` metric of the reference."""
        return len(self.active)

    @property
    def num_inactive_blocks(self) -> int:
        return len(self.inactive)

    @property
    def num_used_blocks(self) -> int:
        """Occupied slots: active plus cached-but-evictable blocks."""
        return len(self.active) + len(self.inactive)

    @property
    def num_free_blocks(self) -> int:
        """Slots available to new allocations (inactive blocks are evictable, so they count as free)."""
        return self.num_gpu_blocks - len(self.active)

    def cached_block_hashes(self) -> set[int]:
        """Sequence hashes of every cached full block (what the router's index should hold)."""
        if not self.enable_prefix_caching:
            return set()
        out = {h for h in self.active if h >= 0}
        out.update(self.inactive)
        return out

    def new_sequence(self, tokens: Sequence[int]) -> KvSequence:
        return KvSequence(list(tokens))

    def cached_prefix_blocks(self, seq: KvSequence, max_blocks: int) -> tuple[int, int]:
        """Longest prefix of ``seq``'s full blocks present in active ∪ inactive (at most ``max_blocks``).

        Returns ``(cached_blocks, active_cached_blocks)``; the second is the part of that prefix already
        in the active pool, which costs no new slot when the sequence is admitted.
        """
        if not self.enable_prefix_caching or max_blocks <= 0:
            return 0, 0
        bs = self.block_size
        max_blocks = min(max_blocks, len(seq.tokens) // bs)
        seq.ensure_hashes(max_blocks, bs)
        active = self.active
        inactive = self.inactive
        hashes = seq.seq_hashes
        n = 0
        n_active = 0
        in_active_run = True
        while n < max_blocks:
            h = hashes[n]
            if h in active:
                if in_active_run:
                    n_active += 1
            elif h in inactive:
                in_active_run = False
            else:
                break
            n += 1
        return n, n_active

    # ------------------------------------------------------------------------------------- allocation

    def allocate(self, seq: KvSequence, num_tokens: int) -> bool:
        """Grow ``seq``'s blocks to hold ``num_tokens`` computed tokens; all-or-nothing.

        Blocks completed by those tokens become full cached blocks (newly cached ones emit one
        ``stored`` event per contiguous run); reused cached blocks are increfed or reactivated without
        any event. Returns False, changing nothing, when the pool cannot supply enough slots even after
        evicting every inactive block — the caller then preempts.
        """
        bs = self.block_size
        blocks = seq.blocks
        cur = len(blocks)
        need = -(-num_tokens // bs)
        full_target = num_tokens // bs
        if need <= cur and full_target <= seq.num_full:
            return True
        if need < cur:
            need = cur
        active = self.active
        num_full = seq.num_full
        if self.bulk_fresh and self.enable_prefix_caching and cur == num_full + (need == cur):
            # The two allocations of every decode step that crosses a block boundary, without the
            # general path's loops (same outcome, same events).
            if need == cur + 1 and full_target == num_full:
                return self._grow_tail(seq)
            if need == cur and full_target == cur:
                self._promote_tail(seq)
                return True
        if not self.enable_prefix_caching:
            fresh = need - cur
            if len(active) + fresh > self.num_gpu_blocks:
                return False
            for _ in range(fresh):
                pid = self._next_private_id
                self._next_private_id = pid - 1
                active[pid] = 1
                blocks.append(pid)
            seq.num_full = max(seq.num_full, full_target)
            return True

        inactive = self.inactive
        seq.ensure_hashes(full_target, bs)
        hashes = seq.seq_hashes
        if self.bulk_fresh and cur == seq.num_full and full_target > cur:
            # A prompt: a cached prefix run, then (usually) blocks cached nowhere.
            p = cur
            while p < full_target and (hashes[p] in active or hashes[p] in inactive):
                p += 1
            fresh_full = dict.fromkeys(hashes[p:full_target], 1)
            if (len(fresh_full) == full_target - p and active.keys().isdisjoint(fresh_full)
                    and inactive.keys().isdisjoint(fresh_full)):
                return self._allocate_fresh(seq, p, fresh_full, need, full_target)
        # Phase 1: count slots, so a failed allocation leaves everything untouched.
        reactivate = 0
        fresh = 0
        for p in range(cur, need):
            if p < full_target:
                h = hashes[p]
                if h in active:
                    continue
                if h in inactive:
                    reactivate += 1
                    continue
            fresh += 1
        if len(active) + reactivate + fresh > self.num_gpu_blocks:
            return False

        stored_positions: list[int] = []
        # Promote the partial tail if the new tokens filled it.
        if cur > seq.num_full and seq.num_full < full_target:
            p = seq.num_full
            partial = blocks[p]
            h = hashes[p]
            del active[partial]
            rc = active.get(h)
            if rc is not None:
                active[h] = rc + 1
            elif h in inactive:
                del inactive[h]
                active[h] = 1
            else:
                active[h] = 1
                stored_positions.append(p)
            blocks[p] = h
        # Phase 2a: take cached blocks first, so the evictions below can never pick one we need.
        new_ids: list[int | None] = []
        for p in range(cur, need):
            if p < full_target:
                h = hashes[p]
                rc = active.get(h)
                if rc is not None:
                    active[h] = rc + 1
                    new_ids.append(h)
                    continue
                if h in inactive:
                    del inactive[h]
                    active[h] = 1
                    new_ids.append(h)
                    continue
            new_ids.append(None)
        # Phase 2b: fresh slots, evicting the least recently freed cached blocks as needed.
        removed: list[int] = []
        capacity = self.num_gpu_blocks
        for i in range(len(new_ids)):
            if new_ids[i] is not None:
                continue
            if len(active) + len(inactive) >= capacity:
                victim, _ = inactive.popitem(last=False)
                removed.append(victim)
            p = cur + i
            if p < full_target:
                h = hashes[p]
                active[h] = 1
                new_ids[i] = h
                stored_positions.append(p)
            else:
                pid = self._next_private_id
                self._next_private_id = pid - 1
                active[pid] = 1
                new_ids[i] = pid
        blocks.extend(new_ids)  # type: ignore[arg-type]  # every slot was filled above
        seq.num_full = full_target if full_target > seq.num_full else seq.num_full
        if removed:
            self._emit(KvRemoved(removed))
        if stored_positions:
            self._emit_stored(seq, stored_positions)
        return True

    def _grow_tail(self, seq: KvSequence) -> bool:
        """A new private tail block after the last full one (evicting the least recently freed cached
        block if the pool is full); False if every slot is active."""
        active = self.active
        if len(active) >= self.num_gpu_blocks:
            return False
        inactive = self.inactive
        if len(active) + len(inactive) >= self.num_gpu_blocks:
            victim, _ = inactive.popitem(last=False)
            self._emit(KvRemoved([victim]))
        pid = self._next_private_id
        self._next_private_id = pid - 1
        active[pid] = 1
        seq.blocks.append(pid)
        return True

    def _promote_tail(self, seq: KvSequence) -> None:
        """The partial tail block is now full: it becomes its sequence hash's block (shared if that
        block is already active or cached; a ``stored`` event if it is new)."""
        p = seq.num_full
        seq.ensure_hashes(p + 1, self.block_size)
        hashes = seq.seq_hashes
        h = hashes[p]
        active = self.active
        del active[seq.blocks[p]]
        rc = active.get(h)
        stored = False
        if rc is not None:
            active[h] = rc + 1
        elif h in self.inactive:
            del self.inactive[h]
            active[h] = 1
        else:
            active[h] = 1
            stored = True
        seq.blocks[p] = h
        seq.num_full = p + 1
        if stored:
            self._emit(KvStored(parent_hash=hashes[p - 1] if p > 0 else None,
                                blocks=[StoredBlock(h, seq.local_hashes[p])]))

    def _allocate_fresh(self, seq: KvSequence, p: int, fresh_full: dict[int, int], need: int,
                        full_target: int) -> bool:
        """``allocate`` when no partial tail waits to be promoted, the new full blocks up to ``p`` are
        cached (active or inactive) and none after it is cached anywhere: a new prompt (the bulk of a
        trace replay's allocations).

        Same outcome as the general path, in C-level bulk steps: take the cached run (incref, or
        reactivate from the inactive pool), evict the least recently freed blocks the new ones need
        room for, insert the new full blocks, one ``stored`` event for the run, then any private tail
        block.
        """
        active = self.active
        inactive = self.inactive
        blocks = seq.blocks
        cur = len(blocks)
        run = seq.seq_hashes[cur:p]
        shared = [h for h in run if h in active]
        cached = [h for h in run if h not in active] if len(shared) < len(run) else []
        n_new = need - p
        if len(active) + len(cached) + n_new > self.num_gpu_blocks:
            return False
        if shared:
            active.update({h: active[h] + 1 for h in shared})
        if cached:
            deque(map(inactive.__delitem__, cached), maxlen=0)
            active.update(dict.fromkeys(cached, 1))
        blocks.extend(run)
        cur = p
        removed: list[int] = []
        excess = len(active) + len(inactive) + n_new - self.num_gpu_blocks
        if excess > 0:
            popitem = inactive.popitem
            removed = [popitem(last=False)[0] for _ in range(excess)]
        active.update(fresh_full)
        blocks.extend(fresh_full)
        if need > full_target:
            pid = self._next_private_id
            self._next_private_id = pid - 1
            active[pid] = 1
            blocks.append(pid)
        seq.num_full = full_target
        if removed:
            self._emit(KvRemoved(removed))
        self._emit_stored(seq, list(range(cur, full_target)))
        return True

    def free(self, seq: KvSequence) -> None:
        """Release a finished or cancelled sequence: deref tail first, cached blocks become inactive.

        Tail-first order gives a chain's deeper blocks older LRU stamps than its prefix, so eviction
        takes suffixes before the shared prefixes they hang off (depth-aware LRU). No events.
        """
        active = self.active
        # In C-level bulk steps (a long prompt holds hundreds of blocks): a sequence holds each block
        # once, so the order-sensitive part is only the inactive pool's insertion order, tail first.
        rev = seq.blocks[::-1]
        rcs = list(map(active.__getitem__, rev))
        last = [b for b, rc in zip(rev, rcs, strict=True) if rc == 1]
        if len(last) < len(rev):
            active.update({b: rc - 1 for b, rc in zip(rev, rcs, strict=True) if rc != 1})
        deque(map(active.__delitem__, last), maxlen=0)
        # (OrderedDict.update is a Python-level loop; its C __setitem__ mapped is several times faster)
        deque(map(self.inactive.__setitem__, [b for b in last if b >= 0], repeat(None)), maxlen=0)
        seq.blocks = []
        seq.num_full = 0

    def destroy(self, seq: KvSequence) -> None:
        """Release a preempted sequence: blocks only it held are dropped from the cache (``removed``)."""
        active = self.active
        removed: list[int] = []
        for b in reversed(seq.blocks):
            rc = active[b] - 1
            if rc:
                active[b] = rc
            else:
                del active[b]
                if b >= 0:
                    removed.append(b)
        seq.blocks = []
        seq.num_full = 0
        if removed:
            self._emit(KvRemoved(removed))

    # ----------------------------------------------------------------------------------------- events

    def drain_events(self) -> list[RouterEvent]:
        """Events emitted since the last drain (only used when no ``event_sink`` was given)."""
        out = self._outbox
        self._outbox = []
        return out

    def _emit_stored(self, seq: KvSequence, positions: list[int]) -> None:
        hashes = seq.seq_hashes
        local = seq.local_hashes
        start = 0
        # One event per contiguous run: each run's parent is the block just before it.
        for i in range(1, len(positions) + 1):
            if i == len(positions) or positions[i] != positions[i - 1] + 1:
                first = positions[start]
                run = positions[start:i]
                self._emit(
                    KvStored(
                        parent_hash=hashes[first - 1] if first > 0 else None,
                        blocks=[StoredBlock(hashes[p], local[p]) for p in run],
                    )
                )
                start = i

    def _emit(self, data: KvStored | KvRemoved) -> None:
        event = RouterEvent(
            worker_id=self.worker_id,
            event=KvCacheEvent(event_id=self._next_event_id, data=data, dp_rank=self.dp_rank),
        )
        self._next_event_id += 1
        if self.event_sink is not None:
            self.event_sink(event)
        else:
            self._outbox.append(event)
