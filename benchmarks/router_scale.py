"""The KV router at fleet scale: 64 / 256 / 1,024 simulated workers feeding its real event path.

Each simulated worker is the mocker's real KV manager (``dynamo.mocker.kv_manager.KvManager``) with
``--capacity`` blocks: a routed request allocates its prompt (``stored`` events for blocks it did not
cache, ``removed`` events for the LRU blocks it evicts), stays active while ``--inflight-per-worker × N``
later requests are routed, then is freed (its blocks stay cached until evicted). Events go straight
into the router's ``RadixTree`` (``apply_event``), as the event-plane consumer would hand them over.
Each request is routed by the KV router's decision path: ``find_matches`` + active-sequence potential
loads + the cost selector over all N candidates, then booked.

The workload is Mooncake-shaped: ``--system-prompts`` shared system prompts (8 blocks), conversations
that grow by 2–12 blocks a turn, each request carrying its conversation's whole context.

Reported per fleet size: events applied per second of pure indexer time (wall clock, and per second of
thread CPU time: this machine's cores are shared) and blocks per second, route
decision p50/p99 (hashes given; find_matches + loads + selection; wall clock and thread CPU time),
cached blocks indexed, the index's
memory per cached block (tracemalloc of a fresh tree rebuilt from the final index) and exactness: every
worker's indexed blocks equal its KV manager's cache, and sampled ``find_matches`` equal a brute-force
prefix walk over the workers' caches.

    python benchmarks/router_scale.py                        # 64, 256, 1024 workers
    python benchmarks/router_scale.py --workers 1024 --requests 40000 --capacity 1024
    python benchmarks/router_scale.py --indexer python       # the pure-Python tree (default: compiled if built)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

from dynamo.kv_router.indexer import INDEXER_IMPLS, select_radix_tree
from dynamo.kv_router.protocols import RouterEvent
from dynamo.kv_router.selector import WorkerSelector
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker
from dynamo.mocker.kv_manager import KvManager

BLOCK = 64


@dataclass
class ScaleResult:
    workers: int
    requests: int
    events: int
    blocks_in_events: int
    events_per_s: float
    blocks_per_s: float
    events_per_cpu_s: float
    decision_p50_us: float
    decision_p99_us: float
    decision_cpu_p50_us: float
    decision_cpu_p99_us: float
    find_matches_p50_us: float
    cached_blocks: int
    tree_nodes: int
    bytes_per_cached_block: float
    exact: bool


class Workload:
    """Conversations over shared system prompts; local hashes are random 63-bit ids per block."""

    def __init__(self, rng: random.Random, system_prompts: int, conversations: int) -> None:
        self.rng = rng
        self.systems = [[rng.getrandbits(63) for _ in range(8)] for _ in range(system_prompts)]
        self.convs: list[list[int]] = []
        self.n_convs = conversations

    def next_request(self) -> list[int]:
        rng = self.rng
        if len(self.convs) < self.n_convs or rng.random() < 0.2:
            ctx = list(rng.choice(self.systems))
            if len(self.convs) < self.n_convs:
                self.convs.append(ctx)
            else:
                self.convs[rng.randrange(len(self.convs))] = ctx
        else:
            ctx = rng.choice(self.convs)
            if len(ctx) > 160:  # a conversation that outgrew its context starts over
                del ctx[8:]
        ctx.extend(rng.getrandbits(63) for _ in range(rng.randint(2, 12)))
        return list(ctx)


def seq_hashes_of(local: list[int]) -> list[int]:
    # The benchmark needs distinct chained ids, not xxh3 itself: hash() of the running tuple is cheap.
    out = []
    prev = 0
    for h in local:
        prev = hash((prev, h)) & 0x7FFFFFFFFFFFFFFF
        out.append(prev)
    return out


def brute_force_scores(kvs: list[KvManager], seq: list[int]) -> dict[tuple[int, int], int]:
    out = {}
    for w, kv in enumerate(kvs):
        cached = kv.cached_block_hashes()
        depth = 0
        while depth < len(seq) and seq[depth] in cached:
            depth += 1
        if depth:
            out[(w, 0)] = depth
    return out


def run_fleet(n_workers: int, n_requests: int, capacity: int, inflight_per_worker: float, seed: int,
              check_every: int, tree_cls: type | None = None) -> ScaleResult:
    tree_cls = tree_cls or select_radix_tree()
    rng = random.Random(seed)
    tree = tree_cls()
    events: list[RouterEvent] = []
    kvs = [KvManager(capacity, BLOCK, worker_id=w, event_sink=events.append) for w in range(n_workers)]
    seqs = ActiveSequencesMultiWorker(BLOCK, rng=rng)
    selector = WorkerSelector(rng)
    candidates = [(w, 0) for w in range(n_workers)]
    for key in candidates:
        seqs.add_worker(key)
    workload = Workload(rng, system_prompts=max(8, n_workers // 8), conversations=n_workers * 8)
    inflight: list[tuple[str, int, object]] = []
    max_inflight = max(1, int(inflight_per_worker * n_workers))
    apply_s = 0.0
    apply_cpu_s = 0.0
    n_events = n_blocks = 0
    decisions: list[float] = []
    cpu: list[float] = []
    matches: list[float] = []
    exact = True
    clock = time.perf_counter
    # This machine's cores are shared: wall-clock p99 includes time the process was descheduled.
    # Thread CPU time is what a decision costs on one core, so both are reported.
    cpu_clock = time.thread_time
    for i in range(n_requests):
        local = workload.next_request()
        seq = seq_hashes_of(local)
        isl = len(local) * BLOCK
        c0 = cpu_clock()
        t0 = clock()
        overlaps = tree.find_matches(local)
        t1 = clock()
        sel = selector.select_booked(seqs, candidates, seq, isl, BLOCK, overlaps)
        t2 = clock()
        cpu.append(cpu_clock() - c0)
        matches.append(t1 - t0)
        decisions.append(t2 - t0)
        rid = str(i)
        seqs.add_request(rid, sel.worker, seq, isl, sel.overlap_blocks)
        kv = kvs[sel.worker_id]
        ks = kv.new_sequence([0] * isl)
        ks.local_hashes = local
        ks.seq_hashes = seq
        if not kv.allocate(ks, isl):
            ks = None  # the worker's cache is full of active blocks: the request would wait; skip it
        inflight.append((rid, sel.worker_id, ks))
        if len(inflight) > max_inflight:
            old_rid, w, old = inflight.pop(0)
            seqs.free(old_rid)
            if old is not None:
                kvs[w].free(old)
        if events:
            t3 = clock()
            c3 = cpu_clock()
            for ev in events:
                tree.apply_event(ev)
            apply_s += clock() - t3
            apply_cpu_s += cpu_clock() - c3
            n_events += len(events)
            for ev in events:
                data = ev.event.data
                n_blocks += len(getattr(data, "blocks", None) or getattr(data, "block_hashes", ()))
            events.clear()
        if check_every and i % check_every == check_every - 1:
            got = tree.find_matches(local).scores
            if got != brute_force_scores(kvs, seq):
                exact = False
    for w, kv in enumerate(kvs):
        if tree.block_hashes(w, 0) != kv.cached_block_hashes():
            exact = False
    cached = sum(tree.num_blocks(w, 0) for w in range(n_workers))
    nodes = tree.num_nodes
    dump = tree.dump_events()
    del tree
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fresh = tree_cls()
    for ev in dump:
        fresh.apply_event(ev)
    del dump
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    decisions.sort()
    cpu.sort()
    matches.sort()

    def pct(vals: list[float], q: float) -> float:
        return vals[min(len(vals) - 1, int(q / 100 * len(vals)))] * 1e6

    return ScaleResult(
        workers=n_workers, requests=n_requests, events=n_events, blocks_in_events=n_blocks,
        events_per_s=n_events / apply_s if apply_s else 0.0, blocks_per_s=n_blocks / apply_s if apply_s else 0.0,
        events_per_cpu_s=n_events / apply_cpu_s if apply_cpu_s else 0.0,
        decision_p50_us=pct(decisions, 50), decision_p99_us=pct(decisions, 99),
        decision_cpu_p50_us=pct(cpu, 50), decision_cpu_p99_us=pct(cpu, 99),
        find_matches_p50_us=pct(matches, 50), cached_blocks=cached, tree_nodes=nodes,
        bytes_per_cached_block=mem / cached if cached else 0.0, exact=exact)


def plot(results: list[ScaleResult], width: int = 50) -> str:
    """Decision latency vs fleet size as a text bar chart (p50 ▒, p99 █)."""
    top = max(r.decision_p99_us for r in results) or 1.0
    lines = ["route decision latency vs fleet size (µs; ▒ p50, █ p99)"]
    for r in results:
        p50 = int(r.decision_p50_us / top * width)
        p99 = int(r.decision_p99_us / top * width)
        lines.append(f"{r.workers:>6} │{'▒' * p50}{'█' * max(p99 - p50, 0)} {r.decision_p50_us:,.0f} / "
                     f"{r.decision_p99_us:,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--requests", type=int, default=None, help="requests per fleet (default 30 per worker, "
                   "at least 8000)")
    p.add_argument("--capacity", type=int, default=1024, help="KV blocks per worker (default 1024)")
    p.add_argument("--inflight-per-worker", type=float, default=2.0)
    p.add_argument("--check-every", type=int, default=50, help="brute-force check every N requests (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gc-threshold0", type=int, default=None,
                   help="gc.set_threshold(N, 50, 1000) for the run (default: Python's 700, 10, 10); the index "
                        "is millions of long-lived containers that every full collection walks")
    p.add_argument("--indexer", choices=INDEXER_IMPLS, default=None,
                   help="KV indexer implementation (default: DYN_KV_INDEXER_IMPL, else auto: compiled when built)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    tree_cls = select_radix_tree(args.indexer)
    print(f"indexer: {tree_cls.__name__}", flush=True)
    if args.gc_threshold0:
        gc.set_threshold(args.gc_threshold0, 50, 1000)
    results = []
    print(f"{'workers':>8}{'requests':>9}{'events/s':>11}{'ev/cpu-s':>10}{'blocks/s':>11}{'decide p50':>11}{'p99 µs':>9}"
          f"{'cpu p50':>9}{'cpu p99':>9}{'match p50':>10}{'cached blocks':>14}{'B/block':>9}{'exact':>7}",
          flush=True)
    for n in args.workers:
        reqs = args.requests or max(8000, 30 * n)
        r = run_fleet(n, reqs, args.capacity, args.inflight_per_worker, args.seed, args.check_every, tree_cls)
        results.append(r)
        print(f"{r.workers:>8}{r.requests:>9}{r.events_per_s:>11,.0f}{r.events_per_cpu_s:>10,.0f}"
              f"{r.blocks_per_s:>11,.0f}"
              f"{r.decision_p50_us:>11,.0f}{r.decision_p99_us:>9,.0f}{r.decision_cpu_p50_us:>9,.0f}"
              f"{r.decision_cpu_p99_us:>9,.0f}{r.find_matches_p50_us:>10,.0f}"
              f"{r.cached_blocks:>14,}{r.bytes_per_cached_block:>9,.0f}{'yes' if r.exact else 'NO':>7}", flush=True)
    print(plot(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.exact for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
