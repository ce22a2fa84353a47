"""The router's own view of the load it has put on each worker (reference §2.5).

Every routed request is booked on its ``(worker_id, dp_rank)`` until its stream ends:

* **prefill tokens** — ``isl − overlap·block_size`` while the request is still prefilling (until the
  first response item that carries tokens);
* **decode blocks** — the request's prompt blocks (sequence hashes), reference-counted per worker so a
  prefix shared by N active requests counts once. With ``assume_kv_reuse=False`` every block gets a
  random hash so nothing is shared; with ``track_active_blocks=False`` no blocks are tracked at all.

Optionally (``track_output_blocks``) blocks grow as output tokens are generated, and when the expected
output length is known the blocks only that request holds are discounted by the fraction of its output
still to come. Requests older than 300 s are force-freed (checked at most every 30 s, on add).

Time is always passed in (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dynamo.kv_router.indexer import WorkerKey
from dynamo.kv_router.protocols import ActiveLoad

STALE_REQUEST_SECS = 300.0
STALE_CHECK_INTERVAL_SECS = 30.0


@dataclass(slots=True, frozen=True)
class PotentialLoad:
    """What a worker's load would be if the request under consideration were sent to it."""

    worker_id: int
    dp_rank: int
    potential_prefill_tokens: int
    potential_decode_blocks: int


class LoadVectors:
    """Potential loads of a whole fleet: ``prefill[slot]`` tokens and ``decode[slot]`` blocks, where a
    worker's slot comes from :meth:`positions` (see :meth:`ActiveSequencesMultiWorker.load_vectors`)."""

    __slots__ = ("_owner", "decode", "prefill")

    def __init__(self, owner: ActiveSequencesMultiWorker, prefill: np.ndarray, decode: np.ndarray) -> None:
        self._owner = owner
        self.prefill = prefill
        self.decode = decode

    def positions(self, candidates: Sequence[WorkerKey]) -> np.ndarray | None:
        return self._owner.positions(candidates)

    def as_dicts(self) -> tuple[dict[WorkerKey, float], dict[WorkerKey, float]]:
        """Per tracked worker, as :meth:`ActiveSequencesMultiWorker.potential_loads` maps them."""
        slot_of = self._owner._slot
        return ({k: float(self.prefill[s]) for k, s in slot_of.items()},
                {k: float(self.decode[s]) for k, s in slot_of.items()})


class _Request:
    __slots__ = (
        "block_ceiling",
        "blocks",
        "expected_output_tokens",
        "generated",
        "isl",
        "prefill_tokens",
        "started_at",
    )

    def __init__(
        self,
        blocks: list[int],
        isl: int,
        prefill_tokens: int,
        expected_output_tokens: int | None,
        started_at: float,
        block_size: int,
    ) -> None:
        self.blocks = blocks
        self.isl = isl
        self.prefill_tokens = prefill_tokens
        self.expected_output_tokens = expected_output_tokens
        self.started_at = started_at
        self.generated = 0
        self.block_ceiling = -(-isl // block_size)


class ActiveSequences:
    """Active requests of one ``(worker_id, dp_rank)``."""

    def __init__(
        self,
        block_size: int,
        track_output_blocks: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.track_output_blocks = track_output_blocks
        self._rng = rng or random.Random()
        self._requests: dict[str, _Request] = {}
        self._refs: dict[int, int] = {}
        # Requests still prefilling, in arrival order (the reference keeps a FIFO of them).
        self._prefilling: dict[str, int] = {}
        self._prefill_total = 0
        self._decaying: set[str] = set()
        self._decay_cache: float | None = 0.0
        self._last_stale_check: float | None = None
        # Set by ActiveSequencesMultiWorker: hash -> bitmask of worker slots whose active blocks hold it.
        self._holders: dict[int, int] | None = None
        self._bit = 0

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def request_ids(self) -> list[str]:
        return list(self._requests)

    # ---------------------------------------------------------------- lifecycle

    def add_request(
        self,
        request_id: str,
        blocks: Sequence[int] | None,
        isl: int,
        prefill_tokens: int,
        expected_output_tokens: int | None = None,
        now: float = 0.0,
    ) -> list[str]:
        """Book a request (its block hashes, already randomised by the caller if needed).

        ``prefill_tokens`` is the prompt work still to do (``isl − overlap·block_size``); 0 means none
        is tracked. Returns the ids of stale requests that were force-freed on the way.
        """
        expired = self._expire_stale(now)
        if request_id in self._requests:
            self.free(request_id)
        own: list[int] = []
        if blocks:
            refs = self._refs
            # a request references each block once, even on a hash collision
            own = list(dict.fromkeys(blocks))
            get = refs.get
            holders = self._holders
            if holders is None:
                for h in own:
                    refs[h] = get(h, 0) + 1
            else:
                bit = self._bit
                hget = holders.get
                for h in own:
                    n = get(h, 0)
                    refs[h] = n + 1
                    if not n:
                        holders[h] = hget(h, 0) | bit
        self._requests[request_id] = _Request(
            own, isl, max(0, prefill_tokens), expected_output_tokens, now, self.block_size
        )
        if prefill_tokens > 0:
            self._prefilling[request_id] = prefill_tokens
            self._prefill_total += prefill_tokens
        self._decay_cache = None
        return expired

    def mark_prefill_completed(self, request_id: str) -> bool:
        """The first token-bearing response arrived: the request's prompt work is done."""
        tokens = self._prefilling.pop(request_id, None)
        if tokens is None:
            return False
        self._prefill_total -= tokens
        return True

    def free(self, request_id: str) -> bool:
        """The stream ended (normally or not): release everything the request held."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        self.mark_prefill_completed(request_id)
        refs = self._refs
        holders = self._holders
        if holders is None:
            for h in req.blocks:
                n = refs[h] - 1
                if n:
                    refs[h] = n
                else:
                    del refs[h]
        else:
            keep = ~self._bit
            for h in req.blocks:
                n = refs[h] - 1
                if n:
                    refs[h] = n
                else:
                    del refs[h]
                    m = holders[h] & keep
                    if m:
                        holders[h] = m
                    else:
                        del holders[h]
        self._decaying.discard(request_id)
        self._decay_cache = None
        return True

    def add_output_tokens(self, request_id: str, generated: int) -> None:
        """``generated`` output tokens so far: grow the request's blocks (``track_output_blocks`` only)."""
        if not self.track_output_blocks:
            return
        req = self._requests.get(request_id)
        if req is None or generated <= req.generated:
            return
        req.generated = generated
        ceiling = -(-(req.isl + generated) // self.block_size)
        refs = self._refs
        getrandbits = self._rng.getrandbits
        holders = self._holders
        while req.block_ceiling < ceiling:
            h = getrandbits(64)
            req.blocks.append(h)
            n = refs.get(h, 0)
            refs[h] = n + 1
            if not n and holders is not None:
                holders[h] = holders.get(h, 0) | self._bit
            req.block_ceiling += 1
        if req.expected_output_tokens:
            self._decaying.add(request_id)
        self._decay_cache = None

    def _expire_stale(self, now: float) -> list[str]:
        last = self._last_stale_check
        if last is not None and now - last < STALE_CHECK_INTERVAL_SECS:
            return []
        self._last_stale_check = now
        cutoff = now - STALE_REQUEST_SECS
        stale = [rid for rid, req in self._requests.items() if req.started_at < cutoff]
        for rid in stale:
            self.free(rid)
        return stale

    # ---------------------------------------------------------------- loads

    @property
    def active_prefill_tokens(self) -> int:
        return self._prefill_total

    @property
    def active_blocks(self) -> int:
        """Unique blocks held, minus the decayed share of blocks only a finishing request holds."""
        if not self._decaying:
            return len(self._refs)
        decay = self._decay_cache
        if decay is None:
            decay = 0.0
            refs = self._refs
            for rid in self._decaying:
                req = self._requests[rid]
                assert req.expected_output_tokens
                done = min(1.0, req.generated / req.expected_output_tokens)
                if done > 0.0:
                    sole = sum(1 for h in req.blocks if refs[h] == 1)
                    decay += done * sole
            self._decay_cache = decay
        # Round half away from zero, like the reference's f64::round.
        return int(len(self._refs) - decay + 0.5)

    def new_blocks_if_added(self, seq_hashes: Sequence[int]) -> int:
        """Blocks of this prompt beyond the longest prefix already active on this worker."""
        refs = self._refs
        for i, h in enumerate(seq_hashes):
            if h not in refs:
                return len(seq_hashes) - i
        return 0


class ActiveSequencesMultiWorker:
    """:class:`ActiveSequences` for every ``(worker_id, dp_rank)``, plus request → worker routing."""

    def __init__(
        self,
        block_size: int,
        *,
        track_active_blocks: bool = True,
        track_output_blocks: bool = False,
        assume_kv_reuse: bool = True,
        track_prefill_tokens: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.track_active_blocks = track_active_blocks
        self.track_output_blocks = track_output_blocks and track_active_blocks
        self.assume_kv_reuse = assume_kv_reuse
        self.track_prefill_tokens = track_prefill_tokens
        self._rng = rng or random.Random()
        self._workers: dict[WorkerKey, ActiveSequences] = {}
        self._request_worker: dict[str, WorkerKey] = {}
        # Fleet-scale decisions (load_vectors): every worker has a slot; its prefill tokens and active
        # blocks are mirrored into arrays after each change, so a decision reads the whole fleet in a
        # few numpy operations and visits one by one only the workers that hold the prompt's first block.
        # Kept only once a decision has asked for them (small fleets use the per-worker loop and never
        # pay for the index: a block per booked block).
        self._vectorised = False
        self._slot: dict[WorkerKey, int] = {}
        self._slot_keys: list[WorkerKey | None] = []
        self._free_slots: list[int] = []
        self._prefill_arr = np.zeros(8)
        self._active_arr = np.zeros(8)
        self._decaying_slots: set[int] = set()
        self._holders: dict[int, int] = {}
        self._positions_cache: tuple[list[WorkerKey], np.ndarray] | None = None

    # ---------------------------------------------------------------- workers

    def _new_worker(self, key: WorkerKey) -> ActiveSequences:
        seqs = ActiveSequences(self.block_size, self.track_output_blocks, self._rng)
        if self._free_slots:
            slot = self._free_slots.pop()
            self._slot_keys[slot] = key
        else:
            slot = len(self._slot_keys)
            self._slot_keys.append(key)
            if slot >= len(self._prefill_arr):
                self._prefill_arr = np.concatenate([self._prefill_arr, np.zeros(len(self._prefill_arr))])
                self._active_arr = np.concatenate([self._active_arr, np.zeros(len(self._active_arr))])
        self._slot[key] = slot
        self._prefill_arr[slot] = 0.0
        self._active_arr[slot] = 0.0
        seqs._bit = 1 << slot
        if self._vectorised:
            seqs._holders = self._holders
        self._workers[key] = seqs
        self._positions_cache = None
        return seqs

    def _sync(self, key: WorkerKey, seqs: ActiveSequences) -> None:
        """Mirror one worker's loads into the fleet arrays (after anything that may change them)."""
        if not self._vectorised:
            return
        slot = self._slot[key]
        self._prefill_arr[slot] = seqs._prefill_total
        self._active_arr[slot] = len(seqs._refs)
        if seqs._decaying:
            self._decaying_slots.add(slot)
        elif self._decaying_slots:
            self._decaying_slots.discard(slot)

    def add_worker(self, key: WorkerKey) -> None:
        if key not in self._workers:
            self._new_worker(key)

    def update_workers(self, keys: Iterable[WorkerKey]) -> None:
        """Make the tracked set exactly ``keys`` (new ones start idle; gone ones drop their requests)."""
        wanted = set(keys)
        for key in [k for k in self._workers if k not in wanted]:
            self._drop(key)
        for key in wanted:
            self.add_worker(key)

    def remove_worker(self, worker_id: int) -> None:
        """Forget every dp rank of ``worker_id`` together with its requests."""
        for key in [k for k in self._workers if k[0] == worker_id]:
            self._drop(key)

    def _drop(self, key: WorkerKey) -> None:
        seqs = self._workers.pop(key)
        for rid in seqs.request_ids():
            self._request_worker.pop(rid, None)
        if seqs._holders is not None:
            holders = seqs._holders
            keep = ~seqs._bit
            for h in seqs._refs:
                m = holders[h] & keep
                if m:
                    holders[h] = m
                else:
                    del holders[h]
            seqs._holders = None
        slot = self._slot.pop(key)
        self._slot_keys[slot] = None
        self._free_slots.append(slot)
        self._prefill_arr[slot] = 0.0
        self._active_arr[slot] = 0.0
        self._decaying_slots.discard(slot)
        self._positions_cache = None

    def workers(self) -> list[WorkerKey]:
        return list(self._workers)

    def worker_of(self, request_id: str) -> WorkerKey | None:
        return self._request_worker.get(request_id)

    def __len__(self) -> int:
        return len(self._request_worker)

    # ---------------------------------------------------------------- lifecycle

    def add_request(
        self,
        request_id: str,
        worker: WorkerKey,
        token_sequence: Sequence[int] | None,
        isl: int,
        overlap: int,
        expected_output_tokens: int | None = None,
        *,
        track_prefill_tokens: bool | None = None,
        assume_kv_reuse: bool | None = None,
        now: float = 0.0,
    ) -> list[str]:
        """Book a routed request on ``worker``; returns ids force-freed as stale.

        ``token_sequence`` is the prompt's sequence hashes (None when active blocks are not tracked);
        ``overlap`` the matched prefix blocks on the chosen worker. ``track_prefill_tokens`` and
        ``assume_kv_reuse`` override the router-wide settings for this request (disaggregated decode
        routing turns both off).
        """
        if request_id in self._request_worker:
            self.free(request_id)
        seqs = self._workers.get(worker)
        if seqs is None:
            seqs = self._new_worker(worker)
        blocks: Sequence[int] | None = None
        if self.track_active_blocks and token_sequence:
            reuse = self.assume_kv_reuse if assume_kv_reuse is None else assume_kv_reuse
            if reuse:
                blocks = token_sequence
            else:
                getrandbits = self._rng.getrandbits
                blocks = [getrandbits(64) for _ in range(len(token_sequence))]
        track = self.track_prefill_tokens if track_prefill_tokens is None else track_prefill_tokens
        prefill = max(0, isl - overlap * self.block_size) if track else 0
        expired = seqs.add_request(request_id, blocks, isl, prefill, expected_output_tokens, now)
        for rid in expired:
            self._request_worker.pop(rid, None)
        self._request_worker[request_id] = worker
        self._sync(worker, seqs)
        return expired

    def mark_prefill_completed(self, request_id: str) -> bool:
        key = self._request_worker.get(request_id)
        if key is None:
            return False
        seqs = self._workers[key]
        done = seqs.mark_prefill_completed(request_id)
        if done and self._vectorised:
            self._prefill_arr[self._slot[key]] = seqs._prefill_total
        return done

    def free(self, request_id: str) -> bool:
        key = self._request_worker.pop(request_id, None)
        if key is None:
            return False
        seqs = self._workers[key]
        freed = seqs.free(request_id)
        self._sync(key, seqs)
        return freed

    def add_output_tokens(self, request_id: str, generated: int) -> None:
        """Report the request's total generated tokens so far (for ``track_output_blocks``)."""
        key = self._request_worker.get(request_id)
        if key is not None:
            seqs = self._workers[key]
            seqs.add_output_tokens(request_id, generated)
            if self.track_output_blocks:
                self._sync(key, seqs)

    # ---------------------------------------------------------------- loads

    def active_prefill_tokens(self) -> dict[WorkerKey, int]:
        return {k: s.active_prefill_tokens for k, s in self._workers.items()}

    def active_blocks(self) -> dict[WorkerKey, int]:
        return {k: s.active_blocks for k, s in self._workers.items()}

    def new_blocks_if_added(self, worker: WorkerKey, seq_hashes: Sequence[int]) -> int:
        """Blocks the request would add to ``worker``'s active set (all of them if unknown)."""
        seqs = self._workers.get(worker)
        return len(seq_hashes) if seqs is None else seqs.new_blocks_if_added(seq_hashes)

    def potential_loads(
        self,
        seq_hashes: Sequence[int] | None,
        isl: int,
        overlaps: Mapping[WorkerKey, int],
        *,
        track_prefill_tokens: bool | None = None,
        assume_kv_reuse: bool | None = None,
    ) -> tuple[dict[WorkerKey, int], dict[WorkerKey, int]]:
        """``(prefill_tokens, decode_blocks)`` per tracked worker if the request went there.

        Prefill tokens = active prefill + ``max(0, isl − overlap·block_size)`` (just active when
        prefill tracking is off); decode blocks = active blocks + blocks beyond the longest active
        prefix (every block when KV reuse is not assumed; 0 when active blocks are not tracked).
        """
        track = self.track_prefill_tokens if track_prefill_tokens is None else track_prefill_tokens
        reuse = self.assume_kv_reuse if assume_kv_reuse is None else assume_kv_reuse
        bs = self.block_size
        prefill: dict[WorkerKey, int] = {}
        decode: dict[WorkerKey, int] = {}
        track_blocks = self.track_active_blocks
        n_seq = len(seq_hashes) if seq_hashes else 0
        first = seq_hashes[0] if n_seq else None  # type: ignore[index]
        get_overlap = overlaps.get
        # One pass over every worker per routing decision (a thousand of them in a large fleet): the
        # common cases read the worker's fields directly instead of going through its properties.
        for key, seqs in self._workers.items():
            tokens = seqs._prefill_total
            if track:
                rest = isl - get_overlap(key, 0) * bs
                if rest > 0:
                    tokens += rest
            prefill[key] = tokens
            if not track_blocks:
                decode[key] = 0
                continue
            active = len(seqs._refs) if not seqs._decaying else seqs.active_blocks
            if not n_seq:
                decode[key] = active
            elif not reuse:
                decode[key] = active + n_seq
            elif first not in seqs._refs:
                decode[key] = active + n_seq  # nothing of this prompt is active there
            else:
                decode[key] = active + seqs.new_blocks_if_added(seq_hashes)  # type: ignore[arg-type]
        return prefill, decode

    def load_vectors(
        self,
        seq_hashes: Sequence[int] | None,
        isl: int,
        overlaps: Mapping[WorkerKey, int],
        *,
        track_prefill_tokens: bool | None = None,
        assume_kv_reuse: bool | None = None,
    ) -> LoadVectors:
        """:meth:`potential_loads` as arrays over worker slots (the same numbers, as floats).

        Cost: a handful of numpy operations over the fleet, plus a visit to each worker with overlap
        and each worker whose active blocks include the prompt's first block; the per-worker loop of
        :meth:`potential_loads` is what a thousand-worker fleet cannot afford per decision.
        """
        if not self._vectorised:
            self._start_vectors()
        track = self.track_prefill_tokens if track_prefill_tokens is None else track_prefill_tokens
        reuse = self.assume_kv_reuse if assume_kv_reuse is None else assume_kv_reuse
        bs = self.block_size
        base_prefill = self._prefill_arr
        if track and isl > 0:
            prefill = base_prefill + isl
        else:
            prefill = base_prefill.copy()
        if track:
            slot_of = self._slot
            for key, overlap in overlaps.items():
                slot = slot_of.get(key)
                if slot is not None:
                    rest = isl - overlap * bs
                    prefill[slot] = base_prefill[slot] + (rest if rest > 0 else 0)
        if not self.track_active_blocks:
            return LoadVectors(self, prefill, np.zeros(len(prefill)))
        active = self._active_arr
        if self._decaying_slots:
            active = active.copy()
            keys = self._slot_keys
            for slot in self._decaying_slots:
                active[slot] = self._workers[keys[slot]].active_blocks  # type: ignore[index]
        n_seq = len(seq_hashes) if seq_hashes else 0
        if not n_seq:
            return LoadVectors(self, prefill, active.copy())
        decode = active + n_seq
        if reuse:
            holding = self._holders.get(seq_hashes[0], 0)  # type: ignore[index]
            keys = self._slot_keys
            workers = self._workers
            while holding:
                low = holding & -holding
                slot = low.bit_length() - 1
                holding ^= low
                seqs = workers[keys[slot]]  # type: ignore[index]
                decode[slot] = active[slot] + seqs.new_blocks_if_added(seq_hashes)  # type: ignore[arg-type]
        return LoadVectors(self, prefill, decode)

    def _start_vectors(self) -> None:
        """First fleet-scale decision: fill the arrays and the holder index from the current bookings."""
        self._vectorised = True
        holders = self._holders
        for key, seqs in self._workers.items():
            bit = seqs._bit
            for h in seqs._refs:
                holders[h] = holders.get(h, 0) | bit
            seqs._holders = holders
            self._sync(key, seqs)

    def positions(self, candidates: Sequence[WorkerKey]) -> np.ndarray | None:
        """Slot of each candidate, in candidate order (None if one is not tracked). Cached: the
        candidate list rarely changes between decisions, and comparing it is cheaper than mapping it."""
        cached = self._positions_cache
        if cached is not None and cached[0] == candidates:
            return cached[1]
        slot_of = self._slot
        try:
            pos = np.fromiter((slot_of[k] for k in candidates), dtype=np.intp, count=len(candidates))
        except KeyError:
            return None
        self._positions_cache = (list(candidates), pos)
        return pos

    def get_potential_loads(
        self, seq_hashes: Sequence[int] | None, isl: int, overlaps: Mapping[WorkerKey, int]
    ) -> list[PotentialLoad]:
        """The ``get_potential_loads`` query of the Python binding."""
        prefill, decode = self.potential_loads(seq_hashes, isl, overlaps)
        return [PotentialLoad(k[0], k[1], prefill[k], decode[k]) for k in prefill]

    def loads(self) -> list[ActiveLoad]:
        """Per-worker load to publish on ``kv_metrics``."""
        return [
            ActiveLoad(
                worker_id=k[0],
                dp_rank=k[1],
                active_decode_blocks=s.active_blocks,
                active_prefill_tokens=s.active_prefill_tokens,
            )
            for k, s in self._workers.items()
        ]
