"""Conditional disaggregation policies (reference §5) on hand-computed views."""

from __future__ import annotations

import pytest

from dynamo.kv_router.conditional_disagg import ConditionalDisaggConfig, DisaggView, prefill_locally
from dynamo.runtime.errors import ConfigError


def view(prompt: int, overlap_blocks: int = 0, **kw: int) -> DisaggView:
    return DisaggView(prompt_tokens=prompt, block_size=16, decode_overlap_blocks=overlap_blocks, **kw)


def test_isl_bounding_needs_both_a_short_and_a_mostly_cached_prompt() -> None:
    cfg = ConditionalDisaggConfig(enabled=True)
    # 336 tokens, 20 blocks (320) cached: eff ISL 16 < 2048 and 16/336 = 0.05 < 0.7 -> local
    local, why = prefill_locally(cfg, view(336, 20))
    assert local and "effective ISL 16 of 336" in why
    # fresh and short: eff ISL 336 < 2048 but ratio 1.0 >= 0.7 -> remote
    assert prefill_locally(cfg, view(336, 0))[0] is False
    # mostly cached but the uncached rest is long: 10000 - 500*16 = 2000 < 2048, ratio 0.2 -> local;
    # 20000 - 1000*16 = 4000 >= 2048 -> remote
    assert prefill_locally(cfg, view(10_000, 500))[0] is True
    assert prefill_locally(cfg, view(20_000, 1000))[0] is False
    # exactly at the thresholds is not below them
    assert prefill_locally(ConditionalDisaggConfig(eff_isl_threshold=16), view(336, 20))[0] is False
    # an overlap beyond the prompt (block-aligned estimate) clamps to zero effective ISL
    assert prefill_locally(cfg, view(32, 3))[0] is True


def test_prefill_load_policy_and_the_or_of_both() -> None:
    busy = dict(prefill_active_tokens=9000, prefill_max_batched_tokens=8192)
    idle = dict(prefill_active_tokens=100, prefill_max_batched_tokens=8192)
    load = ConditionalDisaggConfig(policy="prefill_load", prefill_busy_threshold=1.0)
    assert prefill_locally(load, view(5000, **busy)) == (True, "prefill worker busy: 9000 active tokens vs 8192")
    assert prefill_locally(load, view(5000, **idle))[0] is False
    assert prefill_locally(load, view(5000))[0] is False  # load unknown (non-KV prefill router): remote
    either = ConditionalDisaggConfig(policy="isl_or_load", prefill_busy_threshold=1.0)
    assert prefill_locally(either, view(5000, **busy))[0] is True
    assert prefill_locally(either, view(336, 20, **idle))[0] is True
    assert prefill_locally(either, view(5000, **idle))[0] is False


def test_decode_guard_vetoes_a_local_prefill_on_a_full_decode_worker() -> None:
    cfg = ConditionalDisaggConfig(decode_busy_threshold=0.9)
    local, why = prefill_locally(cfg, view(336, 20, decode_projected_blocks=950, decode_total_blocks=1000))
    assert not local and why.startswith("decode guard")
    assert prefill_locally(cfg, view(336, 20, decode_projected_blocks=800, decode_total_blocks=1000))[0]


@pytest.mark.parametrize("kw", [dict(policy="always"), dict(eff_isl_threshold=-1), dict(eff_isl_ratio_threshold=1.5),
                                dict(prefill_busy_threshold=0.0), dict(decode_busy_threshold=-2.0)])
def test_bad_settings_are_config_errors(kw: dict) -> None:
    with pytest.raises(ConfigError):
        ConditionalDisaggConfig(**kw).validate()


def test_frontend_flags_and_the_json_form() -> None:
    from dynamo.frontend.args import parse_config

    cfg = parse_config(["--router-conditional-disagg", "--router-conditional-disagg-policy", "isl_or_load",
                        "--router-conditional-disagg-eff-isl-threshold", "512"]).conditional_disagg
    assert (cfg.enabled, cfg.policy, cfg.eff_isl_threshold, cfg.eff_isl_ratio_threshold) == (True, "isl_or_load", 512, 0.7)
    assert cfg.prefill_busy_threshold == 4.0  # defaults to --router-queue-threshold
    cfg = parse_config(["--router-conditional-disagg-config",
                        '{"policy": "prefill_load", "prefill_busy_threshold": 1.5}']).conditional_disagg
    assert (cfg.enabled, cfg.policy, cfg.prefill_busy_threshold) == (False, "prefill_load", 1.5)


@pytest.mark.parametrize("argv", [
    ["--router-conditional-disagg-config", "{nope"],
    ["--router-conditional-disagg-config", '{"polcy": "isl_bounding"}'],
    ["--router-conditional-disagg-config", '{"eff_isl_threshold": "big"}'],
    ["--router-conditional-disagg-config", "[1]"],
    ["--router-conditional-disagg-eff-isl-ratio-threshold", "2"],
])
def test_bad_frontend_disagg_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from dynamo.frontend.args import parse_config

    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2 and "conditional-disagg" in capsys.readouterr().err
