"""Configuration: composable flag groups, environment fallbacks (CLI > env > default), config dumps."""

from dynamo.common.configuration.arg_group import ArgGroup
from dynamo.common.configuration.config_base import ConfigBase
from dynamo.common.configuration.config_dump import (
    ConfigDumpEncoder,
    add_dump_config_argument,
    canonical_json,
    collect_config_dump,
    dump_config,
    get_config_dump,
)
from dynamo.common.configuration.utils import (
    ArgumentContainer,
    add_argument,
    add_negatable_bool_argument,
    env_or_default,
    existing_file,
    nullable_float,
    nullable_int,
    parse_bool,
    parse_env_value,
)

__all__ = [
    "ArgGroup",
    "ArgumentContainer",
    "ConfigBase",
    "ConfigDumpEncoder",
    "add_argument",
    "add_dump_config_argument",
    "add_negatable_bool_argument",
    "canonical_json",
    "collect_config_dump",
    "dump_config",
    "env_or_default",
    "existing_file",
    "get_config_dump",
    "nullable_float",
    "nullable_int",
    "parse_bool",
    "parse_env_value",
]
