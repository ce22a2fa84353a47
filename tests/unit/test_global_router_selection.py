"""Global router pool selection (reference §6; the reference README's grid semantics) and config validation."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.global_router.pool_selection import (
    Axis,
    Mode,
    PoolGrid,
    PoolKind,
    PriorityOverride,
    parse_config,
)
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit


# -- the grid ------------------------------------------------------------------------------------


def test_axis_edges_and_values_outside_the_range():
    ax = Axis("isl", 0, 1000, 4)  # buckets of 250
    assert ax.bucket(0) == 0  # min
    assert ax.bucket(249.999) == 0
    assert ax.bucket(250) == 1  # a bucket's lower edge belongs to it
    assert ax.bucket(999) == 3
    assert ax.bucket(1000) == 3  # max: clamped into the last bucket
    assert ax.bucket(10**9) == 3  # above the range
    assert ax.bucket(-1) == 0  # below the range
    assert ax.bucket(-10**9) == 0


def test_truncation_toward_zero_just_below_min():
    # (value - min) / step = -0.6: int() truncates toward zero, giving 0 (floor would give -1; clamped anyway)
    ax = Axis("ttft_ms", 100, 200, 10)
    assert ax.bucket(94) == 0
    # and a fractional position inside the range truncates down
    assert ax.bucket(129.9) == 2


def test_resolution_one_is_a_single_bucket():
    ax = Axis("itl_ms", 5, 6, 1)
    assert {ax.bucket(v) for v in (-100, 5, 5.5, 6, 1e9)} == {0}


def test_missing_value_means_midpoint():
    grid = PoolGrid((Axis("isl", 0, 100, 2), Axis("ttft_ms", 0, 100, 2)), [[0, 1], [2, 3]])
    # midpoints (50, 50) land in the upper bucket of each axis
    choice = grid.choose([None, None])
    assert choice.pool == 3 and choice.cell == (1, 1) and choice.inputs == {"isl": 50, "ttft_ms": 50}
    assert grid.choose([10, None]).pool == 1


def test_mapping_is_rows_by_first_axis():
    grid = PoolGrid((Axis("isl", 0, 8000, 2), Axis("ttft_ms", 0, 1000, 2)), [[0, 1], [1, 0]])
    assert grid.choose([100, 100]).pool == 0  # short prompt, tight TTFT
    assert grid.choose([100, 900]).pool == 1  # short prompt, relaxed TTFT
    assert grid.choose([6000, 100]).pool == 1
    assert grid.choose([6000, 900]).pool == 0


def test_agg_isl_axis_example_from_the_reference_readme():
    axes = (Axis("isl", 0, 24576, 2), Axis("ttft_ms", 1, 10000, 1), Axis("itl_ms", 1, 100, 1))
    grid = PoolGrid(axes, [[[0]], [[1]]])
    assert grid.choose([4096, None, None]).pool == 0
    assert grid.choose([16384, None, None]).pool == 1


def test_priority_overrides_are_inclusive_and_first_match_wins():
    rules = (PriorityOverride(10, 20, 1), PriorityOverride(15, 100, 2))
    grid = PoolGrid((Axis("isl", 0, 10, 1), Axis("ttft_ms", 0, 10, 1)), [[0]], rules)
    assert grid.choose([1, 1]).pool == 0  # no priority: the grid
    assert grid.choose([1, 1], priority=9).pool == 0  # no rule matches
    low_edge = grid.choose([1, 1], priority=10)
    assert low_edge.pool == 1 and low_edge.grid_pool == 0
    assert grid.choose([1, 1], priority=20).pool == 1  # max is inclusive too
    assert grid.choose([1, 1], priority=15).pool == 1  # both match: the first rule wins
    assert grid.choose([1, 1], priority=21).pool == 2
    assert grid.choose([1, 1], priority=101).pool == 0


def _pool_set(priorities):
    cfg = parse_config(agg_config(n=len(priorities), priorities=priorities))
    return cfg.pool_set(PoolKind.AGG)


def test_retry_order_walks_faster_pools_slowest_first():
    ps = _pool_set([0, 1, 2])
    assert ps.retry_order(2, True) == [2, 1, 0]
    assert ps.retry_order(1, True) == [1, 0]
    assert ps.retry_order(0, True) == [0]  # the fastest pool has nothing faster
    assert ps.retry_order(2, False) == [2]
    # ties keep pool order; equal-speed pools are not "faster"
    ps = _pool_set([5, 1, 1, 0])
    assert ps.retry_order(0, True) == [0, 1, 2, 3]
    assert ps.retry_order(1, True) == [1, 3]


def _exact_bucket(lo: int, hi: int, res: int, value: Fraction) -> int:
    """Brute force: the cell [lo + i*w, lo + (i+1)*w) holding value, in exact arithmetic, edges clamped."""
    width = Fraction(hi - lo, res)
    if value < lo:
        return 0
    for i in range(res):
        if lo + i * width <= value < lo + (i + 1) * width:
            return i
    return res - 1


@settings(max_examples=400, deadline=None)
@given(lo=st.integers(-1000, 1000), span=st.integers(1, 5000), res=st.integers(1, 50),
       value=st.integers(-7000, 7000))
def test_bucket_matches_brute_force_grid(lo, span, res, value):
    hi = lo + span
    got = Axis("x", lo, hi, res).bucket(value)
    exact = _exact_bucket(lo, hi, res, Fraction(value))
    if got != exact:
        # Only where the value sits exactly on a cell edge may float division round it into the cell below.
        assert got == exact - 1 and (value - lo) * res % span == 0
    assert 0 <= got < res


@settings(max_examples=200, deadline=None)
@given(res=st.tuples(st.integers(1, 6), st.integers(1, 6)), data=st.data())
def test_choose_reads_the_mapping_cell_of_both_buckets(res, data):
    rows, cols = res
    mapping = [[data.draw(st.integers(0, 3)) for _ in range(cols)] for _ in range(rows)]
    grid = PoolGrid((Axis("isl", 0, 600, rows), Axis("ttft_ms", 0, 60, cols)), mapping)
    isl = data.draw(st.integers(-100, 800))
    ttft = data.draw(st.floats(-10, 100, allow_nan=False))
    choice = grid.choose([isl, ttft])
    r, c = choice.cell
    assert choice.pool == mapping[r][c]
    assert r == _exact_bucket(0, 600, rows, Fraction(isl)) or (isl * rows) % 600 == 0


# -- config parsing -----------------------------------------------------------------------------


def disagg_config() -> dict:
    return {
        "num_prefill_pools": 2,
        "num_decode_pools": 2,
        "prefill_pool_dynamo_namespaces": ["prefill_a", "prefill_b"],
        "decode_pool_dynamo_namespaces": ["decode_a", "decode_b"],
        "prefill_pool_selection_strategy": {
            "isl_min": 0, "isl_max": 1000, "isl_resolution": 2,
            "ttft_min_ms": 10, "ttft_max_ms": 1000, "ttft_resolution": 2,
            "prefill_pool_mapping": [[0, 1], [1, 1]],
        },
        "decode_pool_selection_strategy": {
            "context_length_min": 0, "context_length_max": 1000, "context_length_resolution": 1,
            "itl_min_ms": 1, "itl_max_ms": 100, "itl_resolution": 2,
            "decode_pool_mapping": [[0, 1]],
            "priority_overrides": [{"min_priority": 10, "max_priority": 20, "target_pool": 0}],
        },
    }


def agg_config(n: int = 2, priorities: list[int] | None = None) -> dict:
    cfg = {
        "mode": "agg",
        "num_agg_pools": n,
        "agg_pool_dynamo_namespaces": [f"pool_{i}" for i in range(n)],
        "agg_pool_selection_strategy": {
            "ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 1,
            "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": n,
            "agg_pool_mapping": [list(range(n))],
        },
    }
    if priorities is not None:
        cfg["agg_pool_priorities"] = priorities
    return cfg


def test_parse_disagg_defaults_and_axes():
    cfg = parse_config(disagg_config())
    assert cfg.mode is Mode.DISAGG and cfg.enable_priority_retry is False
    prefill = cfg.pool_set(PoolKind.PREFILL)
    assert prefill.namespaces == ("prefill_a", "prefill_b")
    assert prefill.priorities == (0, 1)  # pool order by default
    assert [a.name for a in prefill.grid.axes] == ["isl", "ttft_ms"]
    decode = cfg.pool_set(PoolKind.DECODE)
    assert [a.name for a in decode.grid.axes] == ["context_length", "itl_ms"]
    assert decode.grid.choose([5, 90], priority=15).pool == 0


def test_parse_accepts_the_older_key_names():
    cfg = disagg_config()
    s = cfg["prefill_pool_selection_strategy"]
    s["ttft_min"], s["ttft_max"] = s.pop("ttft_min_ms"), s.pop("ttft_max_ms")
    axis = parse_config(cfg).pool_set(PoolKind.PREFILL).grid.axes[1]
    assert (axis.lo, axis.hi) == (10, 1000)


def test_parse_agg_with_isl_axis():
    cfg = agg_config()
    cfg["agg_pool_selection_strategy"].update(isl_min=0, isl_max=100, isl_resolution=2,
                                              agg_pool_mapping=[[[0, 0]], [[1, 1]]])
    grid = parse_config(cfg).pool_set(PoolKind.AGG).grid
    assert [a.name for a in grid.axes] == ["isl", "ttft_ms", "itl_ms"]
    assert grid.choose([90, None, None]).pool == 1


def _bad(mutate):
    cfg = disagg_config()
    mutate(cfg)
    return cfg


def _bad_agg(mutate):
    cfg = agg_config()
    mutate(cfg)
    return cfg


BAD_CONFIGS = [
    ("unknown mode", _bad(lambda c: c.update(mode="hybrid")), "mode: must be 'disagg' or 'agg'"),
    ("retry not a bool", _bad(lambda c: c.update(enable_priority_retry="yes")),
     "enable_priority_retry: must be a boolean"),
    ("pool count missing", _bad(lambda c: c.pop("num_decode_pools")), "num_decode_pools: required in disagg mode"),
    ("namespaces vs count", _bad(lambda c: c["prefill_pool_dynamo_namespaces"].append("x")),
     "prefill_pool_dynamo_namespaces: has 3 entries, must match num_prefill_pools (2)"),
    ("priorities length", _bad(lambda c: c.update(decode_pool_priorities=[0])),
     "decode_pool_priorities: has 1 entries, must match num_decode_pools (2)"),
    ("priority not an int", _bad(lambda c: c.update(prefill_pool_priorities=[0, 1.5])),
     "prefill_pool_priorities[1]: must be an integer"),
    ("resolution zero", _bad(lambda c: c["prefill_pool_selection_strategy"].update(isl_resolution=0)),
     "prefill_pool_selection_strategy.isl_resolution: must be a positive integer, got 0"),
    ("min not below max", _bad(lambda c: c["decode_pool_selection_strategy"].update(itl_min_ms=100)),
     "decode_pool_selection_strategy.itl_min_ms: must be less than itl_max_ms"),
    ("mapping rows", _bad(lambda c: c["prefill_pool_selection_strategy"].update(prefill_pool_mapping=[[0, 1]])),
     "prefill_pool_selection_strategy.prefill_pool_mapping: has 1 entries, must match the isl resolution (2)"),
    ("mapping row length", _bad(lambda c: c["decode_pool_selection_strategy"].update(decode_pool_mapping=[[0]])),
     "decode_pool_selection_strategy.decode_pool_mapping[0]: has 1 entries, must match the itl_ms resolution (2)"),
    ("pool index out of range", _bad(lambda c: c["prefill_pool_selection_strategy"]
                                     .update(prefill_pool_mapping=[[0, 1], [1, 2]])),
     "prefill_pool_selection_strategy.prefill_pool_mapping[1][1]: must be a pool index from 0 to 1, got 2"),
    ("override min > max", _bad(lambda c: c["decode_pool_selection_strategy"]["priority_overrides"][0]
                                .update(min_priority=30)),
     "decode_pool_selection_strategy.priority_overrides[0].min_priority: must be <= max_priority (30 > 20)"),
    ("override pool invalid", _bad(lambda c: c["decode_pool_selection_strategy"]["priority_overrides"][0]
                                   .update(target_pool=5)),
     "decode_pool_selection_strategy.priority_overrides[0].target_pool: must be a pool index from 0 to 1, got 5"),
    ("agg isl half-configured", _bad_agg(lambda c: c["agg_pool_selection_strategy"].update(isl_max=10)),
     "agg_pool_selection_strategy: isl_min, isl_max and isl_resolution must be set together"),
    ("strategy missing", _bad_agg(lambda c: c.pop("agg_pool_selection_strategy")),
     "agg_pool_selection_strategy: required in agg mode"),
    ("bound not a number", _bad(lambda c: c["prefill_pool_selection_strategy"].update(ttft_max_ms="1s")),
     "prefill_pool_selection_strategy.ttft_max_ms: must be a number"),
]


@pytest.mark.parametrize("name,config,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_configs_fail_with_one_line_naming_field_and_rule(name, config, message):
    with pytest.raises(ConfigError) as info:
        parse_config(copy.deepcopy(config))
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_every_good_config_parses():
    for cfg in (disagg_config(), agg_config(), agg_config(3, [2, 1, 0])):
        parse_config(cfg)


# -- flags ------------------------------------------------------------------------------------------


def test_flags_env_and_the_seed_spellings(monkeypatch):
    from dynamo.global_router.args import GlobalRouterArgs, build_parser

    def parse(*argv: str) -> GlobalRouterArgs:
        return GlobalRouterArgs.from_cli_args(build_parser().parse_args(list(argv)))

    cfg = parse("--config", "c.json", "--model-name", "m")
    assert (cfg.config_path, cfg.model_name, cfg.component_name) == ("c.json", "m", "global_router")
    assert cfg.default_ttft_target_ms is None and cfg.namespace == "dynamo"
    # seed 000 spells the defaults without the unit
    cfg = parse("--default-ttft-target", "80", "--default-itl-target", "9")
    assert (cfg.default_ttft_target_ms, cfg.default_itl_target_ms) == (80.0, 9.0)
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_CONFIG", "env.json")
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_MODEL_NAME", "env-model")
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_COMPONENT_NAME", "gr2")
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET", "70")  # the older variable name
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_DEFAULT_ITL_TARGET_MS", "7")
    cfg = parse()
    assert (cfg.config_path, cfg.model_name, cfg.component_name) == ("env.json", "env-model", "gr2")
    assert (cfg.default_ttft_target_ms, cfg.default_itl_target_ms) == (70.0, 7.0)
    monkeypatch.setenv("DYN_GLOBAL_ROUTER_DEFAULT_TTFT_TARGET_MS", "60")  # the current name wins
    assert parse().default_ttft_target_ms == 60.0
    assert parse("--default-ttft-target-ms", "5").default_ttft_target_ms == 5.0  # CLI wins
