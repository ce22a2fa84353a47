"""``--num-workers``: the workers' command line, the port they share, and the errors (frontend/process_group.py)."""

from __future__ import annotations

import socket
import sys

import pytest

from dynamo.frontend.args import parse_config
from dynamo.frontend.process_group import bind_reuse_port, reuse_port_supported, worker_argv
from dynamo.runtime.errors import ConfigError

pytestmark = pytest.mark.unit


def test_worker_argv_pins_the_resolved_port_one_process_and_reuse_port() -> None:
    argv = ["--http-port", "0", "--num-workers", "4", "--router-mode", "kv"]
    args = worker_argv(argv, 23456, replica_sync=True)
    config = parse_config(args)  # argparse: the last occurrence wins
    assert (config.http_port, config.num_workers, config.http_reuse_port) == (23456, 1, True)
    assert config.kv_router.router_replica_sync and config.router_mode == "kv"
    assert not parse_config(worker_argv(["--router-mode", "round-robin"], 1, replica_sync=False)) \
        .kv_router.router_replica_sync


@pytest.mark.skipif(not reuse_port_supported(), reason="SO_REUSEPORT balancing is Linux-only")
def test_two_listeners_share_a_port_and_a_plain_bind_is_refused() -> None:
    first = bind_reuse_port("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind_reuse_port("127.0.0.1", port)
    try:
        first.listen()
        second.listen()
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # only same-user SO_REUSEPORT sockets join the group
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("argv, message", [
    (["--num-workers", "0"], "--num-workers must be at least 1"),
    (["--num-workers", "2", "--kserve-grpc-server"], "serves HTTP only"),
])
def test_bad_num_workers_is_a_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv).validate()


def test_outside_linux_several_workers_are_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not reuse_port_supported()
    with pytest.raises(ConfigError, match="only Linux has"):
        parse_config(["--num-workers", "2"]).validate()
    parse_config(["--num-workers", "1"]).validate()  # one process needs nothing special
