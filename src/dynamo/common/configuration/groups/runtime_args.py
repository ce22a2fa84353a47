"""Flags every Dynamo process shares: naming, discovery store, request/event planes, parsers."""

from __future__ import annotations

from pathlib import Path

from dynamo.common.configuration.arg_group import ArgGroup
from dynamo.common.configuration.config_base import ConfigBase
from dynamo.common.configuration.config_dump import add_dump_config_argument
from dynamo.common.configuration.utils import (
    ArgumentContainer,
    add_argument,
    add_negatable_bool_argument,
    existing_file,
)
from dynamo.llm.postprocessor.parsers.reasoning import REASONING_PARSERS
from dynamo.llm.postprocessor.parsers.tool_calls import TOOL_CALL_PARSERS
from dynamo.runtime.errors import ConfigError

STORE_KV_CHOICES = ("etcd", "file", "mem")
REQUEST_PLANE_CHOICES = ("tcp", "nats", "http")
EVENT_PLANE_CHOICES = ("nats", "zmq")
CONNECTOR_CHOICES = ("nixl", "lmcache", "kvbm", "null", "none")


class RuntimeConfig(ConfigBase):
    """Runtime settings; the class defaults are also the flags' defaults."""

    namespace: str = "dynamo"
    # file + tcp + zmq run on one host with no etcd or NATS server (DESIGN §1).
    store_kv: str = "file"
    request_plane: str = "tcp"
    event_plane: str = "zmq"
    connector: list[str] = []
    durable_kv_events: bool = False
    dyn_tool_call_parser: str | None = None
    dyn_reasoning_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = True
    custom_jinja_template: str | None = None
    endpoint_types: str = "chat,completions"
    dump_config_to: str | None = None

    @property
    def endpoint_type_list(self) -> list[str]:
        """``endpoint_types`` split on commas."""
        return [item.strip() for item in self.endpoint_types.split(",") if item.strip()]

    def validate(self) -> None:
        if self.custom_jinja_template is not None:
            if not Path(self.custom_jinja_template).expanduser().is_file():
                raise ConfigError(f"--custom-jinja-template: file not found: {self.custom_jinja_template}")
        if not self.endpoint_type_list:
            raise ConfigError("--endpoint-types must name at least one endpoint type")


class RuntimeArgGroup(ArgGroup):
    """``--namespace``, ``--store-kv``, ``--request-plane``, ``--event-plane`` and friends."""

    def add_arguments(self, parser: ArgumentContainer) -> None:
        defaults = RuntimeConfig
        add_argument(
            parser,
            "--namespace",
            "DYN_NAMESPACE",
            defaults.namespace,
            "Namespace that scopes this process's components, endpoints and events.",
        )
        add_argument(
            parser,
            "--store-kv",
            ("DYN_STORE_KV", "DYN_DISCOVERY_BACKEND"),
            defaults.store_kv,
            "Discovery store: 'file' (one host, no server), 'mem' (one process) or 'etcd' (clusters; "
            "connects with ETCD_* variables).",
            arg_type=str.lower,
            aliases=("--discovery-backend",),
            choices=STORE_KV_CHOICES,
        )
        add_argument(
            parser,
            "--request-plane",
            "DYN_REQUEST_PLANE",
            defaults.request_plane,
            "Transport for requests to workers (case-insensitive).",
            arg_type=str.lower,
            choices=REQUEST_PLANE_CHOICES,
        )
        add_argument(
            parser,
            "--event-plane",
            "DYN_EVENT_PLANE",
            defaults.event_plane,
            "Transport for KV events and metrics: 'zmq' (no server) or 'nats' (clusters, JetStream).",
            arg_type=str.lower,
            choices=EVENT_PLANE_CHOICES,
        )
        add_argument(
            parser,
            "--connector",
            "DYN_CONNECTOR",
            list(defaults.connector),
            "KV transfer connectors, in order (environment: whitespace-separated).",
            nargs="*",
            choices=CONNECTOR_CHOICES,
        )
        add_negatable_bool_argument(
            parser,
            "--durable-kv-events",
            "DYN_DURABLE_KV_EVENTS",
            defaults.durable_kv_events,
            "Publish KV events durably (NATS JetStream) so routers can replay them.",
        )
        add_argument(
            parser,
            "--dyn-tool-call-parser",
            "DYN_TOOL_CALL_PARSER",
            defaults.dyn_tool_call_parser,
            "Tool-call parser the frontend applies to this model's output (splits tool_calls when a chat "
            "request offers tools).",
            choices=sorted(TOOL_CALL_PARSERS),
        )
        add_argument(
            parser,
            "--dyn-reasoning-parser",
            "DYN_REASONING_PARSER",
            defaults.dyn_reasoning_parser,
            "Reasoning parser the frontend applies to this model's output (splits reasoning_content).",
            choices=sorted(REASONING_PARSERS),
        )
        add_negatable_bool_argument(
            parser,
            "--exclude-tools-when-tool-choice-none",
            "DYN_EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE",
            defaults.exclude_tools_when_tool_choice_none,
            "Leave tools out of the chat template when tool_choice is 'none'.",
        )
        add_argument(
            parser,
            "--custom-jinja-template",
            "DYN_CUSTOM_JINJA_TEMPLATE",
            defaults.custom_jinja_template,
            "Chat template file that replaces the model's own (must exist).",
            arg_type=existing_file,
        )
        add_argument(
            parser,
            "--endpoint-types",
            "DYN_ENDPOINT_TYPES",
            defaults.endpoint_types,
            "Comma-separated endpoint types to serve.",
        )
        add_dump_config_argument(parser)
