"""What a replay runs: requests from a Mooncake-format trace or a synthetic workload (reference §3.8).

A Mooncake line is ``{timestamp|created_time, input_length|input_tokens, output_length|output_tokens,
hash_ids[, session_id, delay|delay_ms]}``: one ``hash_ids`` entry per ``trace_block_size`` prompt tokens,
equal ids at equal positions meaning a shared prefix. Prompts are rebuilt as token ids: every hash id
stands for a fixed block of ``trace_block_size`` token ids (a contiguous id range, so distinct ids give
distinct blocks), cut to ``input_length``. Tokens past the last hash id are private to the request.

Pure: parsing takes already-decoded JSON objects; reading files is the CLI's job.
"""

from __future__ import annotations

import random
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import xxhash

from dynamo.kv_router.hashing import XXH3_SEED, compute_block_hashes, compute_seq_hashes
from dynamo.runtime.errors import InvalidArgument

_U32 = 1 << 32
_xxh3 = xxhash.xxh3_64_intdigest
_pack_pair = struct.Struct("<QQ").pack
_LITTLE = sys.byteorder == "little"


@dataclass(slots=True)
class TraceRequest:
    """One request of the workload; times in milliseconds of simulated time."""

    arrival_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()
    session_id: str | None = None
    #: multi-turn traces: the turn arrives this long after the session's previous turn finished
    delay_ms: float | None = None


def _first(obj: Mapping[str, Any], names: tuple[str, ...], line: int, required: bool = True) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    if required:
        raise InvalidArgument(f"trace line {line}: missing {' or '.join(names)}")
    return None


def parse_mooncake(records: Iterable[Mapping[str, Any]]) -> list[TraceRequest]:
    """Mooncake JSONL objects (in file order) → requests; raises :class:`InvalidArgument` on a bad line."""
    out: list[TraceRequest] = []
    for i, obj in enumerate(records, 1):
        if not isinstance(obj, Mapping):
            raise InvalidArgument(f"trace line {i}: expected a JSON object")
        try:
            ts = float(_first(obj, ("timestamp", "created_time"), i, required=False) or 0.0)
            isl = int(_first(obj, ("input_length", "input_tokens"), i))
            osl = int(_first(obj, ("output_length", "output_tokens"), i))
            hash_ids = tuple(int(h) for h in obj.get("hash_ids") or ())
            delay = _first(obj, ("delay", "delay_ms"), i, required=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"trace line {i}: {exc}") from None
        if isl < 1 or osl < 1:
            raise InvalidArgument(f"trace line {i}: input and output lengths must be >= 1")
        session = obj.get("session_id")
        out.append(TraceRequest(ts, isl, osl, hash_ids, None if session is None else str(session),
                                None if delay is None else float(delay)))
    return out


def synthetic(
    input_tokens: int,
    output_tokens: int,
    request_count: int,
    *,
    request_rate: float | None = None,
    arrival_interval_ms: float | None = None,
    shared_prefix_ratio: float = 0.0,
    num_prefix_groups: int = 0,
    block_size: int = 512,
    seed: int = 0,
) -> list[TraceRequest]:
    """``request_count`` requests of ``input_tokens``/``output_tokens``.

    Arrivals: Poisson at ``request_rate`` req/s, else every ``arrival_interval_ms``, else all at 0 (then
    ``--replay-concurrency`` paces them). The first ``shared_prefix_ratio`` of each prompt is shared by
    the requests of one of ``num_prefix_groups`` groups (assigned round-robin); the rest is unique.
    """
    if input_tokens < 1 or output_tokens < 1 or request_count < 1:
        raise InvalidArgument("--input-tokens, --output-tokens and --request-count must be >= 1")
    if not 0.0 <= shared_prefix_ratio <= 1.0:
        raise InvalidArgument("--shared-prefix-ratio must be in [0, 1]")
    rng = random.Random(seed)
    n_ids = -(-input_tokens // block_size)
    shared_ids = int(input_tokens * shared_prefix_ratio) // block_size
    groups = max(num_prefix_groups, 1) if shared_ids else 0
    next_id = groups * shared_ids
    out: list[TraceRequest] = []
    t = 0.0
    for i in range(request_count):
        ids = [(i % groups) * shared_ids + k for k in range(shared_ids)] if groups else []
        ids.extend(range(next_id, next_id + n_ids - len(ids)))
        next_id += n_ids - shared_ids
        out.append(TraceRequest(t, input_tokens, output_tokens, tuple(ids)))
        if request_rate:
            t += rng.expovariate(request_rate) * 1000.0
        elif arrival_interval_ms:
            t += arrival_interval_ms
    return out


class PromptBuilder:
    """Token ids and block hashes of trace prompts, memoised per shared prefix.

    The memo is keyed by (parent sequence hash, hash id): the chained hashes of a hash id's engine
    blocks depend on everything before it, and hash ids already name a whole prefix, so each
    distinct prefix block is hashed once however many requests share it.
    """

    def __init__(self, trace_block_size: int, block_size: int) -> None:
        if trace_block_size < 1 or block_size < 1:
            raise InvalidArgument("block sizes must be >= 1")
        self.trace_block_size = trace_block_size
        self.block_size = block_size
        self._aligned = trace_block_size % block_size == 0
        self._memo: dict[tuple[int | None, int], tuple[list[int], list[int]]] = {}
        step = block_size * 4  # bytes of one engine block (u32 token ids)
        self._slices = [slice(i, i + step) for i in range(0, (trace_block_size // block_size) * step, step)]
        self._private = 0

    def _block_tokens(self, hash_id: int) -> array:
        # A u32 array built by numpy: hashing copies it into bytes as is, where a list or range of
        # Python ints is converted one int at a time (a trace has ~10^5 distinct hash ids).
        tbs = self.trace_block_size
        base = (hash_id * tbs) % (_U32 - tbs)
        out = array("I")
        out.frombytes(np.arange(base, base + tbs, dtype=np.uint32).tobytes())
        return out

    def _id_hashes(self, hash_id: int, parent: int | None) -> tuple[list[int], list[int]]:
        """Local and sequence hashes of the engine blocks of one hash id (chained on ``parent``).

        What ``compute_block_hashes``/``compute_seq_hashes`` compute, in one pass over the id's bytes:
        a full-trace replay hashes ~10^5 distinct ids, and those helpers' per-call work dominated.
        """
        if not _LITTLE:
            local = compute_block_hashes(self._block_tokens(hash_id), self.block_size)
            return local, compute_seq_hashes(local, parent)
        tbs = self.trace_block_size
        base = (hash_id * tbs) % (_U32 - tbs)
        data = memoryview(np.arange(base, base + tbs, dtype=np.uint32).tobytes())
        xxh3 = _xxh3
        local = list(map(xxh3, map(data.__getitem__, self._slices), repeat(XXH3_SEED)))
        seq: list[int] = []
        prev = parent
        pack = _pack_pair
        for h in local:
            prev = h if prev is None else xxh3(pack(prev, h), XXH3_SEED)
            seq.append(prev)
        return local, seq

    def token_ids(self, req: TraceRequest) -> list[int]:
        """The prompt's real token ids (what a live deployment of the same trace is sent)."""
        return self._tokens_at(req, 0, req.input_length)

    def _tokens_at(self, req: TraceRequest, start: int, stop: int) -> list[int]:
        """The prompt's real token ids in ``[start, stop)``."""
        tbs = self.trace_block_size
        out: list[int] = []
        pos = start
        while pos < stop:
            i, off = divmod(pos, tbs)
            end = min(stop, (i + 1) * tbs)
            if i < len(req.hash_ids):
                base = (req.hash_ids[i] * tbs) % (_U32 - tbs)
                out.extend(range(base + off, base + off + end - pos))
            else:
                out.extend(self._private_tokens(end - pos))
            pos = end
        return out

    def _private_tokens(self, n: int) -> range:
        # Past the trace's ids: private tokens from the top of the u32 range, never shared.
        start = _U32 - 1 - self._private - n
        self._private = (self._private + n) % (_U32 // 2)
        return range(start, start + n)

    def build(self, req: TraceRequest) -> tuple[list[int], tuple[list[int], list[int]]]:
        """``(token_ids, (local_hashes, sequence_hashes))``, hashes covering every full prompt block.

        The mocker reads a prompt's token ids only to hash blocks it was not given hashes for, so the
        full blocks carry placeholder zeros and only the partial tail block has its real ids: building
        ten thousand token lists per trace costs a ``[0] * n`` each instead of a Python loop.
        """
        tbs = self.trace_block_size
        bs = self.block_size
        isl = req.input_length
        full = isl // bs
        tokens = [0] * (full * bs)
        tokens.extend(self._tokens_at(req, full * bs, isl))
        if not self._aligned:
            local = compute_block_hashes(self._tokens_at(req, 0, full * bs), bs)
            return tokens, (local, compute_seq_hashes(local))
        per_id = tbs // bs
        local_all: list[int] = []
        seq_all: list[int] = []
        parent: int | None = None
        memo = self._memo
        for h in req.hash_ids:
            if len(local_all) >= full:
                break
            key = (parent, h)
            hit = memo.get(key)
            if hit is None:
                hit = memo[key] = self._id_hashes(h, parent)
            local_all.extend(hit[0])
            seq_all.extend(hit[1])
            parent = hit[1][per_id - 1]
        if len(local_all) < full:
            # Private blocks past the trace's ids, chained on what came before.
            start = len(local_all)
            local = compute_block_hashes(self._tokens_at(req, start * bs, full * bs), bs)
            local_all.extend(local)
            seq_all.extend(compute_seq_hashes(local, seq_all[-1] if seq_all else None))
        del local_all[full:]
        del seq_all[full:]
        return tokens, (local_all, seq_all)
