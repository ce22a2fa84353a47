"""Event-driven radix-tree index of which worker holds which KV blocks (reference §2.3).

The tree is keyed by *local* block hashes (``tokens_hash``) so that a request's prompt can be walked
without knowing any engine's external hashes; each ``(worker_id, dp_rank)`` additionally has a lookup
table from its own external block hash to the node, which is how ``stored``/``removed`` events find
their place.

Hot-path choices (CPython): worker membership of a node is an ``int`` bitmask over small per-worker slot
numbers, so ``find_matches`` intersects sets with one ``&`` per level; a node is a plain 4-item list
``[children, mask, parent, tokens_hash]`` (building one is several times cheaper than an object).
``children`` is None for a leaf, the child node itself when there is exactly one, and a dict keyed by
tokens hash only from two children on: prompts are mostly long unshared chains, and a one-entry dict
per chain link was the largest part of the index's memory (and of its allocations) in a large fleet.

Deviation from the reference, on purpose: when a node loses its last worker we keep its children
attached (the reference clears them and can orphan descendants still held by other lookups). A node is
freed as soon as no worker holds it and it has no children, pruning up the chain, so memory returns to
the bare root once every worker has cleared. Match results are the same: a walk stops at a node no
active worker holds either way.

Two implementations with the same behaviour: :class:`PyRadixTree` here, and a compiled core
(``_radix.c``, wrapped by ``native_indexer.NativeRadixTree``) built by ``make venv`` where a C compiler
exists. ``DYN_KV_INDEXER_IMPL=auto|native|python`` (default auto: compiled when built) picks
:data:`RadixTree`; the property tests check the two equal on random event and query streams. The
compiled one stores hashes as u64 (a non-u64 hash in a stored event is a ValueError there; the wire
decoder masks every hash to u64) and may list a snapshot's blocks of equal depth in another order.
"""

from __future__ import annotations

import logging
import operator
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dynamo.kv_router.hashing import XXH3_SEED, compute_seq_hashes
from dynamo.kv_router.protocols import (
    KvCacheEvent,
    KvCleared,
    KvRemoved,
    KvStored,
    RouterEvent,
    StoredBlock,
)

_log = logging.getLogger(__name__)

WorkerKey = tuple[int, int]
"""``(worker_id, dp_rank)``: the unit the router schedules onto."""

STATUS_OK = "ok"
STATUS_PARENT_NOT_FOUND = "parent_block_not_found"
STATUS_BLOCK_NOT_FOUND = "block_not_found"
STATUS_INVALID_BLOCK = "invalid_block"


@dataclass(slots=True)
class OverlapScores:
    """Per-``(worker_id, dp_rank)`` contiguous matched prefix depth, in blocks.

    Workers that match no block are absent from ``scores``. ``tree_sizes`` holds the number of blocks
    every known worker has in the index (the tie-breaker of the selector); from :meth:`RadixTree.find_matches`
    it is the index's own live table (read it before the next event is applied; never modify it).
    """

    scores: dict[WorkerKey, int] = field(default_factory=dict)
    tree_sizes: Mapping[WorkerKey, int] = field(default_factory=dict)


_Node = list  # [children: None | _Node | dict[int, _Node], mask: int, parent: _Node | None, tokens_hash: int]
_block_hash_of = operator.attrgetter("block_hash")
_pair_of = operator.attrgetter("block_hash", "tokens_hash")


class PyRadixTree:
    """The prefix index fed by KV events, in pure Python. Not thread-safe; one owner applies events and answers
    queries. :data:`RadixTree` is this class or the compiled one with the same behaviour (see the module doc)."""

    def __init__(self) -> None:
        self._root: _Node = [None, 0, None, 0]
        self._num_nodes = 0  # excluding the root
        self._lookup: dict[WorkerKey, dict[int, _Node]] = {}
        # len() of each lookup table, kept up to date per event: find_matches hands it out as
        # tree_sizes instead of copying a thousand sizes into a fresh dict per decision.
        self._sizes: dict[WorkerKey, int] = {}
        self._slot: dict[WorkerKey, int] = {}
        self._slot_keys: list[WorkerKey | None] = []
        self._free_slots: list[int] = []
        self._last_event_id: dict[WorkerKey, int] = {}
        # Extra external hashes of a worker pointing at a node it already holds (only with inconsistent
        # engine hashes): the worker keeps the node until the last of them is removed.
        self._aliases: dict[WorkerKey, dict[int, int]] = {}  # keyed by id(node)
        self.event_counts: Counter[tuple[str, str]] = Counter()
        """``(event_type, status)`` → number of events applied (the ``kv_cache_events_applied`` metric)."""

    # ---------------------------------------------------------------- worker bookkeeping

    def _ensure_worker(self, key: WorkerKey) -> int:
        slot = self._slot.get(key)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
                self._slot_keys[slot] = key
            else:
                slot = len(self._slot_keys)
                self._slot_keys.append(key)
            self._slot[key] = slot
            self._lookup[key] = {}
            self._sizes[key] = 0
        return slot

    def workers(self) -> list[WorkerKey]:
        """Every ``(worker_id, dp_rank)`` the index knows (including ones cleared to zero blocks)."""
        return list(self._lookup)

    def num_blocks(self, worker_id: int, dp_rank: int | None = None) -> int:
        """Blocks held by ``worker_id`` (one dp rank, or summed over all of them when ``dp_rank`` is None)."""
        if dp_rank is not None:
            table = self._lookup.get((worker_id, dp_rank))
            return 0 if table is None else len(table)
        return sum(len(t) for k, t in self._lookup.items() if k[0] == worker_id)

    @property
    def num_nodes(self) -> int:
        """Tree nodes excluding the root (0 means the tree is back to its baseline)."""
        return self._num_nodes

    def last_event_id(self, worker_id: int, dp_rank: int = 0) -> int | None:
        """Highest ``event_id`` applied for this ``(worker, dp_rank)``, or None if none was seen."""
        return self._last_event_id.get((worker_id, dp_rank))

    def detect_gap(self, worker_id: int, dp_rank: int, event_id: int) -> tuple[int, int] | None:
        """The inclusive id range missing before ``event_id`` (to fetch from the worker), if any.

        Nothing is recorded: call it before :meth:`apply_event`. Unknown workers have no gap (the caller
        dumps the worker's whole tree when it first appears).
        """
        last = self._last_event_id.get((worker_id, dp_rank))
        if last is None or event_id <= last + 1:
            return None
        return (last + 1, event_id - 1)

    # ---------------------------------------------------------------- events

    def apply_event(self, event: RouterEvent) -> str:
        """Apply one KV event; returns its status (``ok`` or the error kind) and counts it.

        Events are applied whatever their order; ordering is only tracked (see :meth:`detect_gap`).
        """
        ev = event.event
        key = (event.worker_id, ev.dp_rank)
        last = self._last_event_id.get(key)
        if last is None or ev.event_id > last:
            self._last_event_id[key] = ev.event_id
        data = ev.data
        if type(data) is KvStored:
            blocks = data.blocks
            status = self._store_fresh(key, data.parent_hash, blocks, _pair_of)
            if status is None:
                status = self._store(
                    key, data.parent_hash, map(_pair_of, blocks), len(blocks), map(_block_hash_of, blocks)
                )
            kind = "stored"
        elif type(data) is KvRemoved:
            status = self.remove_blocks(key, data.block_hashes)
            kind = "removed"
        elif type(data) is KvCleared:
            self.clear_worker(event.worker_id)
            status = STATUS_OK
            kind = "cleared"
        else:  # pragma: no cover - the protocol union is closed
            raise TypeError(f"unknown KV event data {data!r}")
        self.event_counts[(kind, status)] += 1
        return status

    def store_blocks(self, key: WorkerKey, parent_hash: int | None, blocks: Sequence[tuple[int, int]]) -> str:
        """Record that ``key`` holds a chain of ``(block_hash, tokens_hash)`` under ``parent_hash``.

        All or nothing: an unknown parent or a chain that refers to itself rejects the whole event.
        """
        status = self._store_fresh(key, parent_hash, blocks, None)
        if status is None:
            status = self._store(key, parent_hash, blocks, len(blocks), (b[0] for b in blocks))
        return status

    def _store_fresh(
        self,
        key: WorkerKey,
        parent_hash: int | None,
        blocks: Sequence[object],
        pair_of: Callable[[object], tuple[int, int]] | None,
    ) -> str | None:
        """The common stored event: none of its block hashes is in the worker's table yet.

        Such an event is valid without building a set of its hashes (a duplicate inside it, or its
        parent among its blocks, would be found in the table when its turn came), so it is applied
        directly. On the first hash already present the blocks applied so far are taken back out and
        None is returned: :meth:`_store` then validates and applies the event from the same state.
        """
        slot = self._ensure_worker(key)
        table = self._lookup[key]
        if parent_hash is None:
            node = self._root
        else:
            found = table.get(parent_hash)
            if found is None:
                return STATUS_PARENT_NOT_FOUND
            node = found
        bit = 1 << slot
        pairs = iter(blocks if pair_of is None else map(pair_of, blocks))  # type: ignore[arg-type]
        applied = 0
        created = 0
        conflict = False
        for block_hash, tokens_hash in pairs:
            if block_hash in table:
                conflict = True
                break
            kids = node[0]
            if kids is None:
                child = None
            elif type(kids) is list:
                child = kids if kids[3] == tokens_hash else None
            else:
                child = kids.get(tokens_hash)
            if child is None:
                child = [None, bit, node, tokens_hash]
                if kids is None:
                    node[0] = child
                elif type(kids) is list:
                    node[0] = {kids[3]: kids, tokens_hash: child}
                else:
                    kids[tokens_hash] = child
                table[block_hash] = child
                created += 1
                applied += 1
                node = child
                # A node just created has no children: the rest of the chain is new, no lookups.
                for block_hash, tokens_hash in pairs:
                    if block_hash in table:
                        conflict = True
                        break
                    child = [None, bit, node, tokens_hash]
                    node[0] = child
                    table[block_hash] = child
                    created += 1
                    applied += 1
                    node = child
                break
            mask = child[1]
            if mask & bit:  # held through another hash already: the alias bookkeeping of _store
                conflict = True
                break
            child[1] = mask | bit
            table[block_hash] = child
            applied += 1
            node = child
        self._num_nodes += created
        if conflict:
            undo = blocks[:applied] if pair_of is None else list(map(pair_of, blocks[:applied]))
            self._drop_hashes(table, [p[0] for p in undo], bit)  # type: ignore[index]
            return None
        self._sizes[key] = len(table)
        return STATUS_OK

    def _store(
        self,
        key: WorkerKey,
        parent_hash: int | None,
        pairs: Iterable[tuple[int, int]],
        n_blocks: int,
        block_hashes: Iterable[int],
    ) -> str:
        slot = self._ensure_worker(key)
        table = self._lookup[key]
        if parent_hash is None:
            node = self._root
        else:
            found = table.get(parent_hash)
            if found is None:
                return STATUS_PARENT_NOT_FOUND
            node = found
        if n_blocks > 1 or parent_hash is not None:
            hashes = set(block_hashes)
            if len(hashes) != n_blocks or parent_hash in hashes:
                return STATUS_INVALID_BLOCK
        bit = 1 << slot
        created = 0
        setdefault = table.setdefault
        pairs = iter(pairs)
        for block_hash, tokens_hash in pairs:
            kids = node[0]
            if kids is None:
                child = None
            elif type(kids) is list:
                child = kids if kids[3] == tokens_hash else None
            else:
                child = kids.get(tokens_hash)
            if child is None:
                child = [None, bit, node, tokens_hash]
                if kids is None:
                    node[0] = child
                elif type(kids) is list:
                    node[0] = {kids[3]: kids, tokens_hash: child}
                else:
                    kids[tokens_hash] = child
                created += 1
                previous = setdefault(block_hash, child)
                if previous is not child:
                    table[block_hash] = child
                    self._release(key, previous, bit)
                node = child
                # A node just created has no children, so the rest of the chain is new too: build it
                # without looking anything up in the tree (the common case: a new turn's blocks).
                for block_hash, tokens_hash in pairs:
                    child = [None, bit, node, tokens_hash]
                    node[0] = child
                    created += 1
                    previous = setdefault(block_hash, child)
                    if previous is not child:
                        table[block_hash] = child
                        self._release(key, previous, bit)
                    node = child
                break
            previous = table.get(block_hash)
            if previous is not child:
                if child[1] & bit:
                    aliases = self._aliases.setdefault(key, {})
                    aliases[id(child)] = aliases.get(id(child), 0) + 1
                else:
                    child[1] |= bit
                table[block_hash] = child
                if previous is not None:
                    # The worker re-stored this hash elsewhere (inconsistent engine hashes): it no
                    # longer holds the old position through this hash.
                    self._release(key, previous, bit)
            node = child
        self._num_nodes += created
        self._sizes[key] = len(table)
        return STATUS_OK

    def remove_blocks(self, key: WorkerKey, block_hashes: Sequence[int]) -> str:
        """Forget blocks of ``key``; unknown hashes are skipped and reported. Never cascades."""
        table = self._lookup.get(key)
        if table is None:
            return STATUS_BLOCK_NOT_FOUND if block_hashes else STATUS_OK
        bit = 1 << self._slot[key]
        status = STATUS_OK
        pop = table.pop
        if self._aliases.get(key):
            for block_hash in block_hashes:
                node = pop(block_hash, None)
                if node is None:
                    status = STATUS_BLOCK_NOT_FOUND
                    continue
                self._release(key, node, bit)
            self._sizes[key] = len(table)
            return status
        status = STATUS_OK if self._drop_hashes(table, block_hashes, bit) else STATUS_BLOCK_NOT_FOUND
        self._sizes[key] = len(table)
        return status

    def _drop_hashes(self, table: dict[int, _Node], block_hashes: Iterable[int], bit: int) -> bool:
        """Remove blocks of a worker with no aliases; False if some hash was unknown.

        _drop_membership inlined, pruning only nodes left empty. The mask is cleared with ^ after a
        test: & with the negative ~bit costs several big-int copies.
        """
        pop = table.pop
        found = True
        pruned = 0
        for block_hash in block_hashes:
            node = pop(block_hash, None)
            if node is None:
                found = False
                continue
            mask = node[1]
            if mask & bit:
                mask ^= bit
                node[1] = mask
            # Prune the emptied leaf and any ancestors it leaves empty (_drop_membership, inlined:
            # evictions take leaves, so nearly every removed block prunes and a call each adds up).
            while not mask and node[0] is None:
                parent = node[2]
                if parent is None:  # the root, or a node already freed
                    break
                kids = parent[0]
                if type(kids) is list:
                    parent[0] = None
                else:
                    del kids[node[3]]
                    if len(kids) == 1:
                        parent[0] = next(iter(kids.values()))
                node[2] = None
                pruned += 1
                node = parent
                mask = node[1]
        self._num_nodes -= pruned
        return found

    def _release(self, key: WorkerKey, node: _Node, bit: int) -> None:
        aliases = self._aliases.get(key)
        if aliases:
            extra = aliases.get(id(node))
            if extra:
                if extra == 1:
                    del aliases[id(node)]
                else:
                    aliases[id(node)] = extra - 1
                return
        self._drop_membership(node, bit)

    def _drop_membership(self, node: _Node, bit: int) -> None:
        node[1] &= ~bit
        while node[1] == 0 and node[0] is None:
            parent = node[2]
            if parent is None:  # the root, or a node already freed
                return
            kids = parent[0]
            if type(kids) is list:
                parent[0] = None
            else:
                del kids[node[3]]
                if len(kids) == 1:
                    parent[0] = next(iter(kids.values()))
            node[2] = None
            self._num_nodes -= 1
            node = parent

    def clear_worker(self, worker_id: int) -> None:
        """``cleared``: drop every block of ``worker_id`` on all dp ranks, keeping the worker known."""
        for key in [k for k in self._lookup if k[0] == worker_id]:
            self._drop_all(key)

    def remove_worker(self, worker_id: int) -> None:
        """The worker left: drop its blocks and forget it entirely (all dp ranks)."""
        for key in [k for k in self._lookup if k[0] == worker_id]:
            self._drop_all(key)
            del self._lookup[key]
            del self._sizes[key]
            slot = self._slot.pop(key)
            self._slot_keys[slot] = None
            self._free_slots.append(slot)
            self._last_event_id.pop(key, None)
            self._aliases.pop(key, None)

    def _drop_all(self, key: WorkerKey) -> None:
        table = self._lookup[key]
        bit = 1 << self._slot[key]
        self._aliases.pop(key, None)
        for node in table.values():
            self._drop_membership(node, bit)
        table.clear()
        self._sizes[key] = 0

    # ---------------------------------------------------------------- queries

    def find_matches(self, local_hashes: Sequence[int], early_exit: bool = False) -> OverlapScores:
        """Contiguous prefix depth matched by each worker for a request's local block hashes.

        A worker that is missing at some level drops out with the depth reached so far and never
        re-joins deeper down. With ``early_exit`` the walk stops as soon as a single worker remains,
        so that worker's score is a lower bound (enough to know who wins the prefix race).
        """
        scores: dict[WorkerKey, int] = {}
        slot_keys = self._slot_keys
        kids = self._root[0]
        active = 0
        depth = 0
        for h in local_hashes:
            if kids is None:
                break
            if type(kids) is list:
                if kids[3] != h:
                    break
                child = kids
            else:
                child = kids.get(h)
                if child is None:
                    break
            mask = child[1]
            if depth == 0:
                active = mask
            elif mask & active != active:
                dropped = active & ~mask
                active &= mask
                while dropped:
                    low = dropped & -dropped
                    scores[slot_keys[low.bit_length() - 1]] = depth  # type: ignore[index]
                    dropped ^= low
            if not active:
                break
            depth += 1
            if early_exit and active & (active - 1) == 0:
                break
            kids = child[0]
        while active:
            low = active & -active
            scores[slot_keys[low.bit_length() - 1]] = depth  # type: ignore[index]
            active ^= low
        return OverlapScores(scores, self._sizes)

    # ---------------------------------------------------------------- snapshots

    def dump_events(self) -> list[RouterEvent]:
        """Stored (and, rarely, removed) events that rebuild this index in an empty tree.

        Blocks are emitted parents first. Because removals do not cascade, a worker can hold a block
        whose ancestors it no longer holds; such ancestors are stored under synthetic hashes and removed
        again at the end so that the rebuilt tree has the same shape and membership.
        """
        return events_from_export(*self._export())

    def block_hashes(self, worker_id: int, dp_rank: int = 0) -> set[int]:
        """The external block hashes ``(worker_id, dp_rank)`` has in the index."""
        return set(self._lookup.get((worker_id, dp_rank), ()))

    def _export(self) -> tuple[list[tuple[WorkerKey, list[tuple[int, int, bool]]]], dict[int, tuple[int, int]]]:
        """The index as plain data (see :func:`events_from_export`); node ids are ``id()``, the root 0."""
        root = self._root
        tables = []
        for key, table in self._lookup.items():
            bit = 1 << self._slot[key]
            tables.append((key, [(h, id(node), bool(node[1] & bit)) for h, node in table.items()]))
        nodes: dict[int, tuple[int, int]] = {}
        stack = [root]
        while stack:
            node = stack.pop()
            kids = node[0]
            if kids is None:
                continue
            children = [kids] if type(kids) is list else list(kids.values())
            pid = 0 if node is root else id(node)
            for child in children:
                nodes[id(child)] = (pid, child[3])
            stack.extend(children)
        return tables, nodes


def events_from_export(
    tables: Iterable[tuple[WorkerKey, list[tuple[int, int, bool]]]], nodes: Mapping[int, tuple[int, int]]
) -> list[RouterEvent]:
    """Snapshot events from an index exported as plain data (shared by both implementations).

    ``tables``: per ``(worker_id, dp_rank)``, its ``(block_hash, node_id, held)`` entries (``held``: the
    worker is a member of that node); ``nodes``: ``node_id -> (parent_id, tokens_hash)`` with the root 0.
    """
    depth_cache: dict[int, int] = {0: 0}

    def depth_of(nid: int) -> int:
        chain: list[int] = []
        cur = nid
        while cur not in depth_cache:
            chain.append(cur)
            cur = nodes[cur][0]
        d = depth_cache[cur]
        for n in reversed(chain):
            d += 1
            depth_cache[n] = d
        return depth_cache[nid]

    out: list[RouterEvent] = []
    for key, items in tables:
        own: dict[int, int] = {}
        aliases: list[tuple[int, int]] = []
        for block_hash, nid, held in items:
            if held:
                if nid in own:
                    aliases.append((nid, block_hash))
                else:
                    own[nid] = block_hash
        held_nodes = sorted(own, key=depth_of)
        used_hashes = {h for h, _, _ in items}
        synthetic: list[int] = []
        events: list[KvStored | KvRemoved] = []
        for nid in held_nodes:
            parent = nodes[nid][0]
            if parent != 0 and parent not in own:
                # Bridge the gap with synthetic blocks for the ancestors the worker lost.
                missing: list[int] = []
                cur = parent
                while cur != 0 and cur not in own:
                    missing.append(cur)
                    cur = nodes[cur][0]
                anchor = None if cur == 0 else own[cur]
                missing.reverse()
                bridge: list[StoredBlock] = []
                tokens = [nodes[n][1] for n in missing]
                for n, t, h in zip(missing, tokens, compute_seq_hashes(tokens, parent=anchor), strict=True):
                    while h in used_hashes:
                        h = (h * 0x9E3779B97F4A7C15 + XXH3_SEED) & 0xFFFFFFFFFFFFFFFF
                    used_hashes.add(h)
                    own[n] = h
                    synthetic.append(h)
                    bridge.append(StoredBlock(h, t))
                events.append(KvStored(parent_hash=anchor, blocks=bridge))
            parent_hash = None if parent == 0 else own[parent]
            events.append(KvStored(parent_hash=parent_hash, blocks=[StoredBlock(own[nid], nodes[nid][1])]))
        for nid, block_hash in aliases:
            parent = nodes[nid][0]
            parent_hash = None if parent == 0 else own[parent]
            events.append(KvStored(parent_hash=parent_hash, blocks=[StoredBlock(block_hash, nodes[nid][1])]))
        if synthetic:
            events.append(KvRemoved(block_hashes=synthetic))
        worker_id, dp_rank = key
        out.extend(
            RouterEvent(worker_id=worker_id, event=KvCacheEvent(event_id=i, data=d, dp_rank=dp_rank))
            for i, d in enumerate(events)
        )
    return out


# ---------------------------------------------------------------- implementation choice

INDEXER_IMPL_ENV = "DYN_KV_INDEXER_IMPL"
INDEXER_IMPLS = ("auto", "native", "python")


def select_radix_tree(impl: str | None = None) -> type[PyRadixTree]:
    """The tree class for ``impl`` (``DYN_KV_INDEXER_IMPL``, default ``auto``).

    ``auto``: the compiled core when it was built (``make venv``), else the pure-Python one; ``native``
    insists on the compiled core; ``python`` always takes the pure-Python one.
    """
    choice = (impl if impl is not None else os.environ.get(INDEXER_IMPL_ENV) or "auto").strip().lower()
    if choice not in INDEXER_IMPLS:
        raise ValueError(f"{INDEXER_IMPL_ENV}={choice!r}: expected one of {', '.join(INDEXER_IMPLS)}")
    if choice == "python":
        return PyRadixTree
    try:
        from dynamo.kv_router.native_indexer import NativeRadixTree
    except ImportError as exc:
        if choice == "native":
            raise ImportError(
                f"{INDEXER_IMPL_ENV}=native but the compiled KV indexer is not built ({exc}); build it with "
                "`python -m dynamo.kv_router.native_build` (make venv does) or use auto/python"
            ) from exc
        return PyRadixTree
    return NativeRadixTree  # type: ignore[return-value]  # same interface, not a subclass


RadixTree: type[PyRadixTree] = select_radix_tree()
"""The KV indexer class the router uses (compiled or pure Python; same behaviour)."""
_log.debug("KV indexer: %s", RadixTree.__name__)
