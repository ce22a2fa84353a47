"""Worker selection (reference §2.4), the router queue policy and the router config (§2.10).

Includes the canonical routing decision test of reference §10.3, at indexer + sequences + selector level.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from dynamo.kv_router.config import KvRouterConfig, RouterConfigOverride
from dynamo.kv_router.hashing import compute_block_hashes, compute_seq_hashes
from dynamo.kv_router.indexer import OverlapScores, RadixTree, WorkerKey
from dynamo.kv_router.protocols import KvCacheEvent, KvStored, RouterEvent, StoredBlock
from dynamo.kv_router.queue import PendingQueue, QueuePolicy, priority_key, should_queue
from dynamo.kv_router.selector import (
    WorkerSelector,
    candidates_from_configs,
    choose,
    compute_costs,
)
from dynamo.kv_router.sequences import ActiveSequencesMultiWorker
from dynamo.llm.protocols.model_card import RuntimeConfig
from dynamo.runtime.errors import ConfigError, InvalidArgument, Unavailable

pytestmark = pytest.mark.unit

BS = 16


# --------------------------------------------------------------------------- canonical decision test


class RouterHarness:
    """Indexer + active sequences + selector wired like the router, with a fake engine emitting events."""

    def __init__(self, configs: dict[int, RuntimeConfig], seed: int = 0, keep_active: bool = False) -> None:
        self.candidates = candidates_from_configs(configs)
        self.tree = RadixTree()
        self.seqs = ActiveSequencesMultiWorker(BS, rng=random.Random(seed))
        self.seqs.update_workers(self.candidates)
        self.selector = WorkerSelector(random.Random(seed))
        self.keep_active = keep_active
        self.cached: dict[WorkerKey, set[int]] = {k: set() for k in self.candidates}
        self.event_ids: Counter[WorkerKey] = Counter()
        block_rng = random.Random(1234)
        self.blocks = {name: [block_rng.randrange(50_000) for _ in range(BS)] for name in "ABCDEFG"}
        self.n = 0

    def tokens(self, names: str) -> list[int]:
        return [t for name in names for t in self.blocks[name]]

    def route(self, names: str) -> tuple[WorkerKey, OverlapScores]:
        tokens = self.tokens(names)
        local = compute_block_hashes(tokens, BS)
        seq = compute_seq_hashes(local)
        overlaps = self.tree.find_matches(local)
        prefill, decode = self.seqs.potential_loads(seq, len(tokens), overlaps.scores)
        sel = self.selector.select(self.candidates, len(tokens), BS, overlaps, prefill, decode)
        assert sel.required_blocks == len(names)
        assert sel.overlap_blocks == overlaps.scores.get(sel.worker, 0)
        return sel.worker, overlaps

    def serve(self, names: str, worker: WorkerKey) -> None:
        """Book the request on ``worker`` and apply the stored events its engine would publish."""
        tokens = self.tokens(names)
        local = compute_block_hashes(tokens, BS)
        seq = compute_seq_hashes(local)
        overlap = self.tree.find_matches(local).scores.get(worker, 0)
        self.n += 1
        rid = f"req-{self.n}"
        self.seqs.add_request(rid, worker, seq, len(tokens), overlap)
        cache = self.cached[worker]
        first_new = next((i for i, h in enumerate(seq) if h not in cache), len(seq))
        if first_new < len(seq):
            parent = seq[first_new - 1] if first_new else None
            blocks = [StoredBlock(seq[i], local[i]) for i in range(first_new, len(seq))]
            event = KvCacheEvent(self.event_ids[worker], KvStored(parent, blocks), worker[1])
            self.event_ids[worker] += 1
            assert self.tree.apply_event(RouterEvent(worker[0], event)) == "ok"
            cache.update(seq)
        self.seqs.mark_prefill_completed(rid)
        if not self.keep_active:
            self.seqs.free(rid)


def run_canonical(h: RouterHarness, a: WorkerKey, b: WorkerKey) -> None:
    h.serve("AB", a)
    h.serve("ACD", a)
    h.serve("ACE", b)
    chosen, overlaps = h.route("ACDF")
    assert overlaps.scores[a] == 3 and overlaps.scores[b] == 2
    assert chosen == a, "a 3-block prefix must beat a 2-block one"
    h.serve("ACDF", chosen)
    chosen, overlaps = h.route("ACG")
    assert overlaps.scores[a] == 2 and overlaps.scores[b] == 2
    assert overlaps.tree_sizes[a] == 5 and overlaps.tree_sizes[b] == 3
    assert chosen == b, "tie on [A, C]: the worker with the smaller tree wins"
    h.serve("ACG", chosen)
    assert h.tree.num_blocks(a[0], a[1]) == 5
    assert h.tree.num_blocks(b[0], b[1]) == 4


@pytest.mark.parametrize("seed", range(5))
def test_canonical_decisions_two_workers(seed: int) -> None:
    h = RouterHarness({7: RuntimeConfig(), 9: RuntimeConfig()}, seed=seed)
    run_canonical(h, (7, 0), (9, 0))


@pytest.mark.parametrize("seed", range(5))
def test_canonical_decisions_with_requests_still_decoding(seed: int) -> None:
    h = RouterHarness({7: RuntimeConfig(), 9: RuntimeConfig()}, seed=seed, keep_active=True)
    run_canonical(h, (7, 0), (9, 0))


@pytest.mark.parametrize("seed", range(5))
def test_canonical_decisions_across_dp_ranks_of_one_worker(seed: int) -> None:
    h = RouterHarness({7: RuntimeConfig(data_parallel_size=2)}, seed=seed)
    assert h.candidates == [(7, 0), (7, 1)]
    run_canonical(h, (7, 0), (7, 1))


@pytest.mark.parametrize("seed", range(5))
def test_canonical_decisions_with_dp_ranks_on_two_workers(seed: int) -> None:
    configs = {
        7: RuntimeConfig(data_parallel_size=2, data_parallel_start_rank=2),
        9: RuntimeConfig(data_parallel_size=2),
    }
    h = RouterHarness(configs, seed=seed)
    assert set(h.candidates) == {(7, 2), (7, 3), (9, 0), (9, 1)}
    run_canonical(h, (7, 3), (9, 0))


# --------------------------------------------------------------------------- cost function


def test_cost_formula_uses_float_prefill_blocks() -> None:
    overlaps = OverlapScores({(1, 0): 2}, {(1, 0): 10, (2, 0): 4})
    costs = compute_costs(
        [(1, 0), (2, 0)],
        isl=40,
        block_size=16,
        overlaps=overlaps,
        potential_prefill_tokens={(1, 0): 40 - 32 + 5, (2, 0): 40},
        potential_decode_blocks={(1, 0): 3, (2, 0): 3},
        overlap_score_weight=2.0,
    )
    c1, c2 = costs
    assert c1.prefill_blocks == pytest.approx(13 / 16)
    assert c1.logit == pytest.approx(2.0 * 13 / 16 + 3)
    assert c2.logit == pytest.approx(2.0 * 40 / 16 + 3)
    assert (c1.overlap_blocks, c2.overlap_blocks) == (2, 0)
    assert (c1.tree_size, c2.tree_size) == (10, 4)


def test_missing_projections_use_the_reference_fallbacks() -> None:
    (c,) = compute_costs([(5, 0)], 50, 16, OverlapScores(), {}, {})
    assert c.prefill_tokens == 50
    assert c.decode_blocks == math.floor(50 / 16)
    (c,) = compute_costs([(5, 0)], 50, 16, OverlapScores(), {}, {}, track_prefill_tokens=False)
    assert c.prefill_tokens == 0 and c.decode_blocks == 0


def test_weight_zero_is_pure_load_balancing() -> None:
    sel = WorkerSelector(random.Random(0)).select(
        [(1, 0), (2, 0)],
        64,
        16,
        OverlapScores({(1, 0): 4}, {(1, 0): 4, (2, 0): 0}),
        {(1, 0): 0, (2, 0): 64},
        {(1, 0): 9, (2, 0): 4},
        overlap_score_weight=0.0,
    )
    assert sel.worker == (2, 0)
    assert sel.candidates[0].worker_id == 2


def test_ties_break_by_tree_size_then_uniformly() -> None:
    cands = [(1, 0), (2, 0), (3, 0)]
    overlaps = OverlapScores({}, {(1, 0): 7, (2, 0): 3, (3, 0): 3})
    same = dict.fromkeys(cands, 16)
    costs = compute_costs(cands, 16, 16, overlaps, same, same)
    seen = Counter(choose(costs, 0.0, random.Random(s)).worker_id for s in range(200))
    assert set(seen) == {2, 3}
    assert min(seen.values()) > 60


def test_temperature_zero_picks_argmin() -> None:
    cands = [(1, 0), (2, 0)]
    costs = compute_costs(cands, 32, 16, OverlapScores(), {(1, 0): 32, (2, 0): 16}, {(1, 0): 2, (2, 0): 2})
    assert all(choose(costs, 0.0, random.Random(s)).worker_id == 2 for s in range(20))


def test_softmax_sampling_matches_the_distribution() -> None:
    cands = [(1, 0), (2, 0), (3, 0)]
    decode = {(1, 0): 0, (2, 0): 1, (3, 0): 2}
    costs = compute_costs(cands, 0, 16, OverlapScores(), dict.fromkeys(cands, 0), decode)
    temperature = 0.5
    # logits 0, 1, 2 → p ∝ exp(-logit / (2 · 0.5))
    weights = [math.exp(-x) for x in (0, 1, 2)]
    expected = [w / sum(weights) for w in weights]
    rng = random.Random(42)
    n = 20_000
    seen = Counter(choose(costs, temperature, rng).worker_id for _ in range(n))
    for worker, p in zip((1, 2, 3), expected, strict=True):
        assert seen[worker] / n == pytest.approx(p, abs=0.015)


def test_softmax_with_equal_logits_is_uniform() -> None:
    cands = [(1, 0), (2, 0)]
    costs = compute_costs(cands, 16, 16, OverlapScores(), {}, {})
    seen = Counter(choose(costs, 1.0, random.Random(s)).worker_id for s in range(400))
    assert min(seen.values()) > 150


def test_no_candidates_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        WorkerSelector().select([], 16, 16, OverlapScores(), {}, {})


def test_candidates_need_a_runtime_config() -> None:
    configs: dict[int, RuntimeConfig | None] = {1: RuntimeConfig(data_parallel_size=3), 2: None}
    assert candidates_from_configs(configs) == [(1, 0), (1, 1), (1, 2)]


def test_selection_explains_top_candidates() -> None:
    cands = [(i, 0) for i in range(6)]
    decode = {k: float(k[0]) for k in cands}
    sel = WorkerSelector(random.Random(0), top_k=3).select(
        cands, 16, 16, OverlapScores(), dict.fromkeys(cands, 0), decode, temperature=10.0
    )
    assert len(sel.candidates) == 3
    assert any(c.worker_id == sel.worker_id for c in sel.candidates)
    logits = [c.logit for c in sel.candidates]
    assert logits[:2] == sorted(logits[:2])


# --------------------------------------------------------------------------- queue


def test_queue_keys() -> None:
    assert priority_key("fcfs", priority_jump=1, arrival_offset_s=3) == -2
    assert priority_key(QueuePolicy.LCFS, priority_jump=1, arrival_offset_s=3) == 4
    assert priority_key("wspt", priority_jump=1, isl=100, overlap_blocks=2, block_size=16) == 2 / 68
    assert priority_key("wspt", isl=32, overlap_blocks=2, block_size=16) == 1.0  # max(1, 0)
    assert priority_key("fcfs", priority_jump=-5, arrival_offset_s=1) == -1  # negative jumps ignored
    with pytest.raises(ValueError):
        priority_key("random")


def test_pending_queue_releases_highest_key_first_fifo_on_ties() -> None:
    q: PendingQueue[str] = PendingQueue()
    for name, t in [("a", 0.0), ("b", 1.0), ("c", 2.0)]:
        q.push(name, priority_key("fcfs", arrival_offset_s=t))
    q.push("vip", priority_key("fcfs", priority_jump=5, arrival_offset_s=3.0))
    q.push("a2", priority_key("fcfs", arrival_offset_s=0.0))
    assert list(q) == ["vip", "a", "a2", "b", "c"]
    assert q.remove("b") and not q.remove("zzz")
    assert [q.pop() for _ in range(len(q))] == ["vip", "a", "a2", "c"]
    assert not q


def test_should_queue_only_when_every_worker_is_saturated() -> None:
    mnbt = {1: 100, 2: 100}
    assert not should_queue({(1, 0): 401, (2, 0): 400}, mnbt, 4.0)
    assert should_queue({(1, 0): 401, (2, 0): 401}, mnbt, 4.0)
    assert not should_queue({(1, 0): 401, (2, 0): 401}, mnbt, None)
    # Missing max_num_batched_tokens counts as 10M.
    assert not should_queue({(3, 0): 1_000_000}, {}, 4.0)
    assert should_queue({(3, 0): 40_000_001}, {}, 4.0)
    # Pinned: only the pinned worker matters; restricted without a pin bypasses the check.
    assert should_queue({(1, 0): 401, (2, 0): 0}, mnbt, 4.0, pinned=(1, 0))
    assert not should_queue({(1, 0): 401, (2, 0): 401}, mnbt, 4.0, restricted=True)
    assert not should_queue({}, mnbt, 4.0)


# --------------------------------------------------------------------------- config


def test_config_defaults_match_the_reference() -> None:
    cfg = KvRouterConfig().validate()
    assert cfg.overlap_score_weight == 1.0
    assert cfg.router_temperature == 0.0
    assert cfg.use_kv_events is True
    assert cfg.router_ttl_secs == 120.0
    assert cfg.router_max_tree_size == 2**20
    assert cfg.router_prune_target_ratio == 0.8
    assert cfg.router_track_active_blocks and not cfg.router_track_output_blocks
    assert cfg.router_assume_kv_reuse and cfg.router_track_prefill_tokens
    assert cfg.router_queue_threshold == 4.0
    assert cfg.router_queue_policy == "fcfs"
    assert cfg.router_event_threads == 4
    assert cfg.router_snapshot_threshold == 1_000_000
    assert cfg.should_subscribe_to_kv_events


@pytest.mark.parametrize(
    "changes",
    [
        {"router_track_output_blocks": True, "router_track_active_blocks": False},
        {"durable_kv_events": True, "use_kv_events": False},
        {"overlap_score_weight": -1.0},
        {"router_temperature": -0.1},
        {"router_prune_target_ratio": 1.5},
        {"router_event_threads": 0},
        {"router_queue_policy": "random"},
        {"router_prefill_load_model": "aic", "router_queue_policy": "wspt"},
        {"router_prefill_load_model": "aic", "router_track_prefill_tokens": False},
        {"router_prefill_load_model": "magic"},
        {"use_remote_indexer": True, "serve_indexer": True},
        {"serve_indexer": True, "overlap_score_weight": 0.0},
        {"router_ttl_secs": 0.0},
        {"router_max_tree_size": 0},
        {"router_queue_threshold": -1.0},
    ],
)
def test_invalid_configs_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        KvRouterConfig(**changes).validate()  # type: ignore[arg-type]


def test_valid_special_configs() -> None:
    approx = KvRouterConfig(use_kv_events=False).validate()
    assert approx.effective_event_threads == 1 and not approx.should_subscribe_to_kv_events
    KvRouterConfig(router_queue_threshold=None).validate()
    KvRouterConfig(router_prefill_load_model="aic").validate()
    assert not KvRouterConfig(overlap_score_weight=0.0).should_subscribe_to_kv_events


def test_request_override() -> None:
    base = KvRouterConfig()
    decode = base.with_override(
        {"overlap_score_weight": 0, "assume_kv_reuse": False, "track_prefill_tokens": False}
    )
    assert decode.overlap_score_weight == 0.0
    assert not decode.router_assume_kv_reuse and not decode.router_track_prefill_tokens
    assert base.overlap_score_weight == 1.0  # the base config is untouched
    assert base.with_override(RouterConfigOverride(router_temperature=0.5)).router_temperature == 0.5
    assert base.with_override(None) is base
    with pytest.raises(InvalidArgument):
        base.with_override({"overlap_score_weight": -2})
    with pytest.raises(InvalidArgument):
        base.with_override({"router_temperature": "hot"})
