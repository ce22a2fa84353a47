"""Hosts made of Linux network namespaces on one bridge: a real multi-host network inside a test.

Each host is a namespace with one interface (``eth0``, a veth pair whose other end is on the bridge)
and its own address in a private /24; the test process reaches every host through the bridge's own
address. Processes started on a host see only that host's interfaces: nothing is on loopback between
hosts. ``Host.link(False)`` takes the host's interface down (a cable pulled on its side).

Needs root (CAP_NET_ADMIN) and ``ip``; :func:`netns_unavailable` says why not where they are missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=15)


def netns_unavailable() -> str | None:
    """None if namespaces and bridges can be made here, else the reason."""
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    probe = f"dynprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    veth: str  # the bridge side

    def command(self, *args: str) -> list[str]:
        """``args`` run on this host (``ip netns exec`` execs the program: the pid is the program's)."""
        return ["ip", "netns", "exec", self.netns, *args]

    def python(self, *args: str) -> list[str]:
        return self.command(sys.executable, *args)

    def link(self, up: bool) -> None:
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")


@dataclass
class Network:
    prefix: str  # "10.A.B"
    bridge: str
    gateway: str  # the test process's address on the bridge
    tag: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"dyn-{self.tag}-{name}"
        veth, peer = f"dv{self.tag}{index}", f"dp{self.tag}{index}"
        ip = f"{self.prefix}.{index}"
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("-n", netns, "link", "set", peer, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        host = Host(name, netns, ip, veth)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A bridge with a private /24 (10.200-249.x.0/24); hosts are added with ``add(name)``."""
    tag = uuid.uuid4().hex[:4]
    prefix = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}"
    bridge = f"dynbr{tag}"
    net = Network(prefix, bridge, f"{prefix}.254", tag)
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        yield net
    finally:
        net.close()
