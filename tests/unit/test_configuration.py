"""dynamo.common.configuration: precedence, env parsing, help text, config base, runtime group, dumps."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.common.configuration import (
    ArgGroup,
    ConfigBase,
    ConfigDumpEncoder,
    add_argument,
    add_negatable_bool_argument,
    canonical_json,
    dump_config,
    env_or_default,
    get_config_dump,
    nullable_float,
    nullable_int,
    parse_bool,
)
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_dyn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ambient DYN_* variables would otherwise leak into default checks."""
    for name in list(os.environ):
        if name.startswith("DYN_"):
            monkeypatch.delenv(name)


def _parser_with(**add_kwargs: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prog")
    add_argument(parser, **add_kwargs)
    return parser


# --- precedence: CLI > env > default, for every type -----------------------------------------------

PRECEDENCE_CASES = [
    # (arg_type, extra kwargs, default, env value, expected from env, cli args, expected from cli)
    (str, {}, "dynamo", "from-env", "from-env", ["--x", "from-cli"], "from-cli"),
    (int, {}, 3, "7", 7, ["--x", "11"], 11),
    (float, {}, 0.5, "0.25", 0.25, ["--x", "0.75"], 0.75),
    (bool, {}, False, "yes", True, ["--x", "off"], False),
    (str, {"nargs": "*"}, ["a"], "b c", ["b", "c"], ["--x", "d", "e"], ["d", "e"]),
    (int, {"nargs": "*"}, [], "1 2", [1, 2], ["--x", "3"], [3]),
    (nullable_float, {}, 0.9, "None", None, ["--x", "0.1"], 0.1),
    (nullable_float, {}, None, "0.3", 0.3, ["--x", "None"], None),
    (nullable_int, {}, None, "5", 5, ["--x", "none"], None),
]


@pytest.mark.parametrize(
    ("arg_type", "extra", "default", "env_value", "from_env", "cli", "from_cli"), PRECEDENCE_CASES
)
def test_precedence_cli_over_env_over_default(
    monkeypatch: pytest.MonkeyPatch,
    arg_type: Any,
    extra: dict[str, Any],
    default: Any,
    env_value: str,
    from_env: Any,
    cli: list[str],
    from_cli: Any,
) -> None:
    def parse(argv: list[str]) -> Any:
        parser = _parser_with(
            flag_name="--x", env_var="DYN_X", default=default, help="h", arg_type=arg_type, **extra
        )
        return parser.parse_args(argv).x

    assert parse([]) == default
    monkeypatch.setenv("DYN_X", env_value)
    assert parse([]) == from_env
    assert parse(cli) == from_cli


def test_dest_is_derived_from_flag_or_explicit() -> None:
    parser = argparse.ArgumentParser()
    add_argument(parser, "--router-temperature", "DYN_T", 0.0, "h", arg_type=float)
    add_argument(parser, "--kv-block-size", "DYN_B", 16, "h", arg_type=int, dest="block_size")
    ns = parser.parse_args(["--router-temperature", "1.5", "--kv-block-size", "32"])
    assert (ns.router_temperature, ns.block_size) == (1.5, 32)


def test_bool_arg_type_does_not_use_python_truthiness() -> None:
    parser = _parser_with(flag_name="--x", env_var="DYN_X", default=True, help="h", arg_type=bool)
    assert parser.parse_args(["--x", "false"]).x is False


# --- negatable bools -------------------------------------------------------------------------------


def _negatable(default: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prog")
    add_negatable_bool_argument(parser, "--durable", "DYN_DURABLE", default, "Durable events.")
    return parser


@pytest.mark.parametrize("default", [False, True])
def test_negatable_bool_flags_override_default(default: bool) -> None:
    assert _negatable(default).parse_args([]).durable is default
    assert _negatable(default).parse_args(["--durable"]).durable is True
    assert _negatable(default).parse_args(["--no-durable"]).durable is False


@pytest.mark.parametrize(
    ("env_value", "expected"), [("TRUE", True), ("on", True), ("0", False), ("No", False)]
)
def test_negatable_bool_env_and_cli_override(
    monkeypatch: pytest.MonkeyPatch, env_value: str, expected: bool
) -> None:
    monkeypatch.setenv("DYN_DURABLE", env_value)
    assert _negatable(not expected).parse_args([]).durable is expected
    assert _negatable(False).parse_args(["--no-durable" if expected else "--durable"]).durable is not expected


# --- bad environment values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "raw", "fragment"),
    [
        (bool, "maybe", "expected true/false"),
        (int, "12x", "expected an integer"),
        (float, "fast", "expected a number"),
        (nullable_float, "off", "expected a number or None"),
        (nullable_int, "1.5", "expected an integer or None"),
    ],
)
def test_env_or_default_rejects_bad_values_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value_type: Any, raw: str, fragment: str
) -> None:
    monkeypatch.setenv("DYN_BAD", raw)
    with pytest.raises(ConfigError) as info:
        env_or_default("DYN_BAD", None, value_type)
    message = str(info.value)
    assert f"invalid value {raw!r} for environment variable DYN_BAD" in message
    assert fragment in message


def test_env_or_default_conversions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_or_default("DYN_UNSET", 42) == 42
    monkeypatch.setenv("DYN_V", "  8 ")
    assert env_or_default("DYN_V", 1) == 8  # type taken from the default
    assert env_or_default("DYN_V", None) == "  8 "  # no type, no default: raw string
    assert env_or_default("DYN_V", None, Path) == Path("  8 ")
    monkeypatch.setenv("DYN_V", "a  b\tc")
    assert env_or_default("DYN_V", []) == ["a", "b", "c"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["true", "1", "yes", "on", "false", "0", "no", "off"]), st.data())
def test_parse_bool_accepts_any_case(token: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(token), max_size=len(token)))
    spelled = "".join(c.upper() if flip else c for c, flip in zip(token, flips, strict=True))
    assert parse_bool(spelled) is (token in ("true", "1", "yes", "on"))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=8))
def test_parse_bool_rejects_everything_else(value: str) -> None:
    if value.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        assert isinstance(parse_bool(value), bool)
    else:
        with pytest.raises(ValueError):
            parse_bool(value)


@pytest.mark.parametrize(
    ("register", "env_value", "fragment"),
    [
        (
            lambda p: add_negatable_bool_argument(p, "--x", "DYN_X", False, "h"),
            "maybe",
            "expected true/false",
        ),
        (lambda p: add_argument(p, "--x", "DYN_X", 1, "h", arg_type=int), "one", "expected an integer"),
        (lambda p: add_argument(p, "--x", "DYN_X", 1.0, "h", arg_type=float), "x", "expected a number"),
        (
            lambda p: add_argument(p, "--x", "DYN_X", "a", "h", choices=("a", "b")),
            "c",
            "expected one of: a, b",
        ),
    ],
)
def test_bad_env_value_is_a_usage_error_at_parse_time(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    register: Any,
    env_value: str,
    fragment: str,
) -> None:
    monkeypatch.setenv("DYN_X", env_value)
    parser = argparse.ArgumentParser(prog="prog")
    register(parser)  # registering never raises: the error belongs to parsing
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "prog: error:" in err
    assert f"invalid value {env_value!r} for environment variable DYN_X" in err
    assert fragment in err


def test_bad_env_value_is_ignored_when_the_flag_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_X", "maybe")
    parser = argparse.ArgumentParser()
    add_negatable_bool_argument(parser, "--x", "DYN_X", False, "h")
    add_argument(parser, "--n", "DYN_X", 1, "h", arg_type=int)
    ns = parser.parse_args(["--no-x", "--n", "4"])
    assert (ns.x, ns.n) == (False, 4)


def test_cli_type_errors_keep_argparse_wording(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DYN_X", "bad")  # deferred env error wraps the type...
    parser = _parser_with(flag_name="--x", env_var="DYN_X", default=1, help="h", arg_type=int)
    with pytest.raises(SystemExit):
        parser.parse_args(["--x", "abc"])
    assert "invalid int value: 'abc'" in capsys.readouterr().err  # ...without changing CLI messages


def test_bad_env_value_exits_2_through_a_real_cli() -> None:
    script = textwrap.dedent(
        """
        import argparse
        from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
        parser = argparse.ArgumentParser(prog="worker")
        RuntimeArgGroup().add_arguments(parser)
        RuntimeConfig.from_cli_args(parser.parse_args())
        """
    )
    env = {**os.environ, "DYN_DURABLE_KV_EVENTS": "maybe"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert (
        "error: argument --durable-kv-events/--no-durable-kv-events: invalid value 'maybe' "
        "for environment variable DYN_DURABLE_KV_EVENTS (expected true/false" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


# --- aliases and help ------------------------------------------------------------------------------


def test_obsolete_flag_is_accepted_and_marked_deprecated() -> None:
    parser = _parser_with(
        flag_name="--router-block-size", env_var="DYN_B", default=16, help="Block size.",
        obsolete_flag="--block-size", arg_type=int,
    )  # fmt: skip
    assert parser.parse_args(["--block-size", "64"]).router_block_size == 64
    assert parser.parse_args(["--router-block-size", "32"]).router_block_size == 32
    assert "--block-size is deprecated; use --router-block-size" in " ".join(parser.format_help().split())


def test_obsolete_negatable_flag_accepts_both_spellings() -> None:
    parser = argparse.ArgumentParser()
    add_negatable_bool_argument(parser, "--kv-events", "DYN_E", True, "h", obsolete_flag="--use-kv-events")
    assert parser.parse_args(["--no-use-kv-events"]).kv_events is False
    assert "--use-kv-events is deprecated" in " ".join(parser.format_help().split())


def test_help_shows_env_var_and_code_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_RATIO", "0.9")  # the help documents the code default, not the environment
    parser = argparse.ArgumentParser()
    add_argument(parser, "--ratio", "DYN_RATIO", 0.5, "Share of 100% budget.", arg_type=float)
    add_negatable_bool_argument(parser, "--flag", "DYN_FLAG", True, "A switch.")
    text = " ".join(parser.format_help().split())
    assert "Share of 100% budget. env var: DYN_RATIO | default: 0.5" in text
    assert "A switch. env var: DYN_FLAG | default: true" in text
    assert text.count("default:") == 2  # no argparse-added duplicate for the negatable flag


def test_runtime_help_documents_every_flag() -> None:
    parser = argparse.ArgumentParser()
    RuntimeArgGroup().add_arguments(parser)
    documented = [a for a in parser._actions if a.dest != "help"]
    assert len(documented) == 12
    for action in documented:
        assert "env var: DYN_" in action.help and "| default: " in action.help, action.dest


# --- ConfigBase ------------------------------------------------------------------------------------


class _BaseConfig(ConfigBase):
    namespace: str = "dynamo"
    block_size: int = 16
    tags: list[str] = []
    registry: ClassVar[dict[str, int]] = {}


class _DerivedConfig(_BaseConfig):
    block_size: int = 64
    temperature: float = 0.0
    unset: str | None = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0")


def test_from_cli_args_fills_defaults_across_the_mro() -> None:
    config = _DerivedConfig.from_cli_args(argparse.Namespace(namespace="ns", extra="kept"))
    assert vars(config) == {
        "namespace": "ns",  # from the command line
        "extra": "kept",  # unannotated attributes of the namespace are kept
        "block_size": 64,  # the derived default overrides the base one
        "tags": [],
        "temperature": 0.0,
        "unset": None,
    }
    assert list(vars(config))[2:] == ["block_size", "tags", "temperature", "unset"]  # base fields first


def test_from_cli_args_does_not_share_mutable_defaults() -> None:
    first = _BaseConfig.from_cli_args(argparse.Namespace())
    first.tags.append("x")
    assert _BaseConfig.from_cli_args(argparse.Namespace()).tags == []
    assert _BaseConfig.tags == []


def test_repr_lists_sorted_attributes_and_validate_is_a_hook() -> None:
    config = _DerivedConfig.from_cli_args(argparse.Namespace(temperature=-1.0))
    assert repr(config) == (
        "_DerivedConfig(block_size=64, namespace='dynamo', tags=[], temperature=-1.0, unset=None)"
    )
    with pytest.raises(ConfigError, match="temperature"):
        config.validate()
    ConfigBase().validate()  # the base hook accepts anything


def test_arg_group_is_abstract() -> None:
    with pytest.raises(TypeError):
        ArgGroup()  # type: ignore[abstract]


# --- RuntimeArgGroup -------------------------------------------------------------------------------


def _runtime(argv: list[str]) -> RuntimeConfig:
    parser = argparse.ArgumentParser(prog="worker")
    RuntimeArgGroup().add_arguments(parser)
    return RuntimeConfig.from_cli_args(parser.parse_args(argv))


def test_runtime_defaults() -> None:
    config = _runtime([])
    assert vars(config) == {
        "namespace": "dynamo",
        "store_kv": "file",
        "request_plane": "tcp",
        "event_plane": "zmq",
        "connector": [],
        "durable_kv_events": False,
        "dyn_tool_call_parser": None,
        "dyn_reasoning_parser": None,
        "exclude_tools_when_tool_choice_none": True,
        "custom_jinja_template": None,
        "endpoint_types": "chat,completions",
        "dump_config_to": None,
    }
    config.validate()
    assert config.endpoint_type_list == ["chat", "completions"]


def test_runtime_env_and_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_NAMESPACE", "prod")
    monkeypatch.setenv("DYN_REQUEST_PLANE", "NATS")
    monkeypatch.setenv("DYN_CONNECTOR", "nixl lmcache")
    monkeypatch.setenv("DYN_DURABLE_KV_EVENTS", "1")
    monkeypatch.setenv("DYN_EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE", "false")
    config = _runtime([])
    assert (config.namespace, config.request_plane, config.connector) == ("prod", "nats", ["nixl", "lmcache"])
    assert (config.durable_kv_events, config.exclude_tools_when_tool_choice_none) == (True, False)
    config = _runtime(
        ["--namespace", "dev", "--request-plane", "HTTP", "--event-plane", "nats", "--connector"]
    )
    assert (config.namespace, config.request_plane, config.event_plane, config.connector) == (
        "dev", "http", "nats", [],
    )  # fmt: skip


def test_runtime_store_kv_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _runtime(["--discovery-backend", "etcd"]).store_kv == "etcd"
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "mem")
    assert _runtime([]).store_kv == "mem"
    monkeypatch.setenv("DYN_STORE_KV", "etcd")  # the primary name wins over the alias
    assert _runtime([]).store_kv == "etcd"
    assert _runtime(["--store-kv", "file"]).store_kv == "file"


@pytest.mark.parametrize(
    ("env_var", "value"),
    [("DYN_STORE_KV", "redis"), ("DYN_EVENT_PLANE", "kafka"), ("DYN_CONNECTOR", "nixl foo")],
)
def test_runtime_rejects_env_values_outside_choices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env_var: str, value: str
) -> None:
    monkeypatch.setenv(env_var, value)
    with pytest.raises(SystemExit) as info:
        _runtime([])
    assert info.value.code == 2
    assert f"for environment variable {env_var} (expected one of:" in capsys.readouterr().err


def test_runtime_custom_jinja_template_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    assert _runtime(["--custom-jinja-template", str(template)]).custom_jinja_template == str(template)
    with pytest.raises(SystemExit):
        _runtime(["--custom-jinja-template", str(tmp_path / "missing.jinja")])
    assert "file not found" in capsys.readouterr().err
    monkeypatch.setenv("DYN_CUSTOM_JINJA_TEMPLATE", str(tmp_path / "gone.jinja"))
    with pytest.raises(SystemExit):
        _runtime([])
    assert "environment variable DYN_CUSTOM_JINJA_TEMPLATE (file not found" in capsys.readouterr().err
    config = _runtime(["--custom-jinja-template", str(template)])
    template.unlink()
    with pytest.raises(ConfigError, match="file not found"):
        config.validate()


def test_add_arguments_has_no_side_effects() -> None:
    before = dict(os.environ)
    first, second = argparse.ArgumentParser(), argparse.ArgumentParser()
    RuntimeArgGroup().add_arguments(first)
    RuntimeArgGroup().add_arguments(second)
    assert dict(os.environ) == before
    assert vars(first.parse_args([])) == vars(second.parse_args([]))


# --- config dump -----------------------------------------------------------------------------------


def test_dump_config_to_writes_one_line_of_canonical_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYN_HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("HF_API_KEY", "k")
    monkeypatch.setenv("DYN_NAMESPACE", "dumped")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    target = tmp_path / "nested" / "dir" / "config.json"
    config = _runtime(["--dump-config-to", str(target)])
    dump_config(config.dump_config_to, config)

    text = target.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1
    dump = json.loads(text)
    assert text.strip() == canonical_json(dump)  # sorted keys, no whitespace
    assert dump["environment"]["DYN_HF_TOKEN"] == "<REDACTED>"
    assert dump["environment"]["HF_API_KEY"] == "<REDACTED>"
    assert "hf_secret_value" not in text
    assert dump["environment"]["DYN_NAMESPACE"] == "dumped"
    assert "UNRELATED_VARIABLE" not in dump["environment"]
    assert dump["config"]["namespace"] == "dumped"
    assert dump["config"]["dump_config_to"] == str(target)
    import dynamo

    assert dump["dynamo_version"] == dynamo.__version__
    assert dump["installed_packages"]["msgspec"] == msgspec.__version__
    assert set(dump["system_info"]) >= {"platform", "architecture", "hostname", "os_name"}
    assert dump["runtime_info"]["python_version_info"] == list(sys.version_info[:3])


def test_dump_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    dump_config("-", {"a": 1})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["config"] == {"a": 1}


def test_dump_write_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR):
        dump_config(blocker / "config.json", {"a": 1})  # parent is a file
    assert any(record.getMessage().startswith("CONFIG_DUMP: ") for record in caplog.records)


def test_dump_without_target_logs_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dynamo.common.configuration.config_dump"):
        dump_config(None, {"marker": "visible"})
    assert any("CONFIG_DUMP:" in r.getMessage() and "visible" in r.getMessage() for r in caplog.records)


class _Color(enum.Enum):
    RED = "red"


class _Model(pydantic.BaseModel):
    size: int = 3


class _Struct(msgspec.Struct):
    ids: list[int]


def test_encoder_handles_config_values() -> None:
    value = {
        "set": {3, 1, 2},
        "enum": _Color.RED,
        "model": _Model(),
        "struct": _Struct(ids=[1]),
        "path": Path("/tmp/x"),
        "ns": argparse.Namespace(a=1),
        "text": "naïve",
    }
    text = canonical_json(value)
    assert json.loads(text) == {
        "set": [1, 2, 3],
        "enum": "_Color.RED",
        "model": {"size": 3},
        "struct": {"ids": [1]},
        "path": "/tmp/x",
        "ns": {"a": 1},
        "text": "naïve",
    }
    assert "naïve" in text  # ensure_ascii=False
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    assert json.loads(json.dumps(_Model(), cls=ConfigDumpEncoder)) == {"size": 3}


def test_dump_of_runtime_config_is_deterministic() -> None:
    config = _runtime([])
    first, second = json.loads(get_config_dump(config)), json.loads(get_config_dump(config))
    assert first["config"] == second["config"] == json.loads(canonical_json(vars(config)))
