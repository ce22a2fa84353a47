"""Throughput of the KV indexer (``RadixTree``) on an event stream derived from a Mooncake trace.

Each trace request's ``hash_ids`` (512-token blocks) become local block hashes (xxh3 of the id, so
identical ids at identical positions are reusable prefix blocks) chained into sequence hashes. Requests
are assigned to ``--workers`` simulated engines (by a hash of their first blocks, so conversations
stick, or round-robin); each engine keeps an LRU cache of ``--capacity`` blocks and emits ``stored``
events for blocks it did not have and ``removed`` events for what it evicts. The stream is built once
(untimed); each run replays it into a fresh tree in trace order — ``find_matches`` for the request,
then its events — timing the two kinds of operation separately. Median of ``--runs`` runs.

``--compare ai-dynamo`` replays the same stream (written to a temp JSONL file) through ai-dynamo 1.6.1's
Rust ``RadixTree`` in a subprocess running that venv's interpreter, checks that the overlap scores of
every ``--sample-every``-th query agree, and prints both systems' rates and the ratio ours/theirs.

    python benchmarks/kv_indexer.py [--trace conversation|synthetic|PATH] [--workers 16]
        [--capacity 4096] [--assign prefix|round-robin] [--limit N] [--runs 3] [--compare ai-dynamo] [--sample-every 10]
        [--indexer auto|native|python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import orjson
import xxhash

from dynamo.kv_router.hashing import compute_seq_hashes
from dynamo.kv_router.indexer import INDEXER_IMPLS, select_radix_tree
from dynamo.kv_router.protocols import KvCacheEvent, KvRemoved, KvStored, RouterEvent, StoredBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traces import load_trace as load_requests

RadixTree = select_radix_tree()  # --indexer replaces it (main)
AI_DYNAMO_VENV = Path(__file__).resolve().parent / ".venv-ai-dynamo"
AI_DYNAMO_VERSION = "1.6.1"


@dataclass
class Stream:
    ops: list[tuple[bool, object]]  # (is_query, local hashes | RouterEvent)
    n_queries: int
    n_stored: int
    n_removed: int
    n_blocks_stored: int
    n_blocks_removed: int
    n_query_blocks: int


def load_trace(name: str, limit: int | None) -> list[list[int]]:
    return [list(r.hash_ids) for r in load_requests(name, limit)]


def build_stream(requests: list[list[int]], workers: int, capacity: int, assign: str) -> Stream:
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(workers)]
    event_ids = [0] * workers
    ops: list[tuple[bool, object]] = []
    local_of: dict[int, int] = {}
    n_stored = n_removed = n_blocks = n_blocks_removed = n_query_blocks = 0
    for i, ids in enumerate(requests):
        if not ids:
            continue
        local = []
        for hid in ids:
            h = local_of.get(hid)
            if h is None:
                h = local_of[hid] = xxhash.xxh3_64_intdigest(hid.to_bytes(8, "little"), seed=1337)
            local.append(h)
        seq = compute_seq_hashes(local)
        ops.append((True, local))
        n_query_blocks += len(local)
        if assign == "round-robin":
            w = i % workers
        else:
            w = xxhash.xxh3_64_intdigest(repr(ids[:2]).encode()) % workers
        cache = caches[w]
        first_new = 0
        while first_new < len(seq) and seq[first_new] in cache:
            first_new += 1
        for h in seq:
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
        if first_new < len(seq):
            parent = seq[first_new - 1] if first_new else None
            blocks = [StoredBlock(seq[j], local[j]) for j in range(first_new, len(seq))]
            ev = KvCacheEvent(event_ids[w], KvStored(parent, blocks))
            event_ids[w] += 1
            ops.append((False, RouterEvent(w, ev)))
            n_stored += 1
            n_blocks += len(blocks)
        evicted = []
        while len(cache) > capacity:
            evicted.append(cache.popitem(last=False)[0])
        if evicted:
            ev = KvCacheEvent(event_ids[w], KvRemoved(evicted))
            event_ids[w] += 1
            ops.append((False, RouterEvent(w, ev)))
            n_removed += 1
            n_blocks_removed += len(evicted)
    n_queries = sum(1 for q, _ in ops if q)
    return Stream(ops, n_queries, n_stored, n_removed, n_blocks, n_blocks_removed, n_query_blocks)


@dataclass
class RunResult:
    events_per_s: float
    event_blocks_per_s: float
    queries_per_s: float
    total_ops_per_s: float
    final_nodes: int
    not_ok: int


def one_run(stream: Stream) -> RunResult:
    tree = RadixTree()
    apply = tree.apply_event
    find = tree.find_matches
    clock = time.perf_counter_ns
    t_events = 0
    t_queries = 0
    for is_query, payload in stream.ops:
        if is_query:
            t0 = clock()
            find(payload)  # type: ignore[arg-type]
            t_queries += clock() - t0
        else:
            t0 = clock()
            apply(payload)  # type: ignore[arg-type]
            t_events += clock() - t0
    n_events = len(stream.ops) - stream.n_queries
    not_ok = sum(n for (_, status), n in tree.event_counts.items() if status != "ok")
    return RunResult(
        events_per_s=n_events / (t_events / 1e9),
        event_blocks_per_s=(stream.n_blocks_stored + stream.n_blocks_removed) / (t_events / 1e9),
        queries_per_s=stream.n_queries / (t_queries / 1e9),
        total_ops_per_s=len(stream.ops) / ((t_events + t_queries) / 1e9),
        final_nodes=tree.num_nodes,
        not_ok=not_ok,
    )


# -- the reference (ai-dynamo's Rust RadixTree through its Python binding) -----------------------

# Runs inside the ai-dynamo venv (never imported here): replays the JSONL stream written by
# write_stream(). Events are pre-encoded to the bytes its apply_event() takes (serde JSON of a
# KvCacheEvent), untimed; only the binding calls are timed, exactly as for ours.
REFERENCE_RUNNER = r"""
import json, sys, time
from dynamo.llm import RadixTree

stream_path, runs, every, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ops = []
with open(stream_path) as f:
    for line in f:
        obj = json.loads(line)
        if "q" in obj:
            ops.append((True, obj["q"], 0))
        else:
            ops.append((False, json.dumps(obj["event"], separators=(",", ":")).encode(), obj["worker_id"]))
n_queries = sum(1 for q, _, _ in ops if q)
results, samples = [], {}
clock = time.perf_counter_ns
for run in range(runs):
    tree = RadixTree()
    apply, find = tree.apply_event, tree.find_matches
    t_events = t_queries = 0
    errors = qi = 0
    for is_query, payload, worker in ops:
        if is_query:
            t0 = clock()
            res = find(payload)
            t_queries += clock() - t0
            if run == 0 and qi % every == 0:
                samples[qi] = sorted([w, dp, s] for (w, dp), s in res.scores.items())
            qi += 1
        else:
            t0 = clock()
            try:
                apply(worker, payload)
            except Exception:
                errors += 1
            t_events += clock() - t0
    n_events = len(ops) - n_queries
    results.append({"events_per_s": n_events / (t_events / 1e9), "queries_per_s": n_queries / (t_queries / 1e9),
                    "total_ops_per_s": len(ops) / ((t_events + t_queries) / 1e9), "errors": errors})
with open(out_path, "w") as f:
    json.dump({"runs": results, "samples": samples}, f)
"""


def write_stream(stream: Stream, path: Path) -> None:
    """One JSON object a line: ``{"q": [local hashes]}`` or a RouterEvent in its wire shape."""
    dumps = orjson.dumps
    with path.open("wb") as f:
        for is_query, payload in stream.ops:
            obj = {"q": payload} if is_query else payload.to_wire()  # type: ignore[attr-defined]
            f.write(dumps(obj))
            f.write(b"\n")


def sample_scores(stream: Stream, every: int) -> dict[int, list[list[int]]]:
    """Our overlap scores for every ``every``-th query, at its place in the stream (untimed)."""
    tree = RadixTree()
    out: dict[int, list[list[int]]] = {}
    qi = 0
    for is_query, payload in stream.ops:
        if is_query:
            if qi % every == 0:
                res = tree.find_matches(payload)  # type: ignore[arg-type]
                out[qi] = sorted([w, dp, s] for (w, dp), s in res.scores.items())
            qi += 1
        else:
            tree.apply_event(payload)  # type: ignore[arg-type]
    return out


def decode_run(stream: Stream) -> float:
    """Events/s for ours when starting from the same kind of bytes the reference gets (JSON wire
    shape → RouterEvent.from_wire → apply_event), which is the path the router's event loop takes."""
    wire = [orjson.dumps(p.to_wire()) for q, p in stream.ops if not q]  # type: ignore[attr-defined]
    tree = RadixTree()
    apply, loads, from_wire = tree.apply_event, orjson.loads, RouterEvent.from_wire
    t0 = time.perf_counter_ns()
    for raw in wire:
        apply(from_wire(loads(raw)))
    return len(wire) / ((time.perf_counter_ns() - t0) / 1e9)


def compare_ai_dynamo(stream: Stream, ours: list[RunResult], venv: Path, runs: int, every: int) -> int:
    """Replay the same stream through ai-dynamo's RadixTree in its own venv; print both and the ratio.
    Returns the number of sampled queries whose scores differ."""
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "DYN_"))}
    # The reference logs a WARN line per block of every rejected `removed` event (see README); writing
    # them would triple its event time, which measures its logger rather than its tree.
    env["DYN_LOG"] = "error"
    with tempfile.TemporaryDirectory(prefix="kv-indexer-bench-") as tmp:
        where = subprocess.run([str(python), "-c", "import dynamo.llm; print(dynamo.llm.__file__)"], cwd=tmp,
                               env=env, capture_output=True, text=True)
        if where.returncode != 0 or not Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()):
            print(f"compare ai-dynamo: cannot import dynamo.llm from {venv} "
                  f"(install it with `python benchmarks/serve_bench.py --compare ai-dynamo`)\n{where.stderr[-1000:]}")
            return -1
        stream_path, out_path = Path(tmp) / "stream.jsonl", Path(tmp) / "out.json"
        write_stream(stream, stream_path)
        proc = subprocess.run([str(python), "-c", REFERENCE_RUNNER, str(stream_path), str(runs), str(every),
                               str(out_path)], cwd=tmp, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"compare ai-dynamo: reference run failed\n{proc.stderr[-2000:]}")
            return -1
        theirs = json.loads(out_path.read_text())
    t_runs = theirs["runs"]
    mine = sample_scores(stream, every)
    their_samples = {int(k): v for k, v in theirs["samples"].items()}
    mismatches = sorted(k for k in mine if mine[k] != their_samples.get(k))
    decoded = statistics.median(decode_run(stream) for _ in range(runs))
    rows = [
        ("events applied/s", statistics.median(r.events_per_s for r in ours),
         statistics.median(r["events_per_s"] for r in t_runs)),
        ("  from JSON bytes", decoded, statistics.median(r["events_per_s"] for r in t_runs)),
        ("find_matches/s", statistics.median(r.queries_per_s for r in ours),
         statistics.median(r["queries_per_s"] for r in t_runs)),
        ("all ops/s", statistics.median(r.total_ops_per_s for r in ours),
         statistics.median(r["total_ops_per_s"] for r in t_runs)),
    ]
    print(f"\nours vs ai-dynamo {AI_DYNAMO_VERSION} RadixTree (median of {runs} runs; the reference's apply_event "
          "takes serde-JSON bytes, ours a decoded RouterEvent — 'from JSON bytes' times ours from the same kind of bytes)")
    print(f"{'metric':<20}{'ours':>14}{'ai-dynamo':>14}{'ours/theirs':>13}")
    for name, a, b in rows:
        print(f"{name:<20}{a:>14,.0f}{b:>14,.0f}{a / b:>13.2f}")
    errors = max(r["errors"] for r in t_runs)
    print(f"overlap scores: {len(mine)} sampled queries (every {every}th), {len(mismatches)} mismatches; "
          f"reference events rejected={errors}")
    for k in mismatches[:5]:
        print(f"  query #{k}: ours={mine[k]} theirs={their_samples.get(k)}")
    return len(mismatches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--trace", default="conversation", help="conversation | synthetic | path to a JSONL trace"
    )
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--capacity", type=int, default=4096, help="blocks per simulated engine (LRU)")
    ap.add_argument("--assign", choices=["prefix", "round-robin"], default="prefix")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N requests")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", choices=["ai-dynamo"], default=None)
    ap.add_argument("--ai-dynamo-venv", type=Path, default=AI_DYNAMO_VENV)
    ap.add_argument("--sample-every", type=int, default=10, help="compare scores of every Nth query")
    ap.add_argument("--indexer", choices=INDEXER_IMPLS, default=None,
                    help="KV indexer implementation (default: DYN_KV_INDEXER_IMPL, else auto: compiled when built)")
    args = ap.parse_args()
    global RadixTree
    RadixTree = select_radix_tree(args.indexer)

    t0 = time.perf_counter()
    requests = load_trace(args.trace, args.limit)
    stream = build_stream(requests, args.workers, args.capacity, args.assign)
    build_s = time.perf_counter() - t0
    print(
        f"trace={args.trace} requests={stream.n_queries} workers={args.workers} capacity={args.capacity} "
        f"assign={args.assign} indexer={RadixTree.__name__} | stored events={stream.n_stored} ({stream.n_blocks_stored} blocks) "
        f"removed events={stream.n_removed} ({stream.n_blocks_removed} blocks) | query blocks={stream.n_query_blocks} | built in {build_s:.1f}s"
    )
    results = [one_run(stream) for _ in range(args.runs)]
    rows = [
        ("events applied/s", [r.events_per_s for r in results]),
        ("event blocks/s", [r.event_blocks_per_s for r in results]),
        ("find_matches/s", [r.queries_per_s for r in results]),
        ("all ops/s", [r.total_ops_per_s for r in results]),
    ]
    print(f"{'metric':<20}{'median':>14}{'min':>14}{'max':>14}")
    for name, values in rows:
        print(f"{name:<20}{statistics.median(values):>14,.0f}{min(values):>14,.0f}{max(values):>14,.0f}")
    last = results[-1]
    print(f"final tree nodes={last.final_nodes} events not ok={last.not_ok}")
    if args.compare == "ai-dynamo":
        mismatches = compare_ai_dynamo(stream, results, args.ai_dynamo_venv, args.runs, args.sample_every)
        if mismatches:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
