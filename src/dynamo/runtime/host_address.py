"""The address a process advertises for a socket it bound: never a wildcard that others cannot dial."""

from __future__ import annotations

import contextlib
import logging
import socket

logger = logging.getLogger(__name__)

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "*", "::", "[::]"})
# Connecting a UDP socket sends nothing; it only makes the kernel pick the source address of the
# route to this (private, never contacted) destination: the host's outward-facing address.
_PROBE_DESTINATION = ("10.254.254.254", 9)


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_HOSTS


def routable_host() -> str:
    """An address of this host that other hosts can reach; 127.0.0.1 when there is none."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(_PROBE_DESTINATION)
        addr = probe.getsockname()[0]
        if addr and not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    with contextlib.suppress(OSError):
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    logger.warning("no routable address found for this host; advertising 127.0.0.1 (set the advertise "
                   "host explicitly for multi-host deployments)")
    return "127.0.0.1"


def advertised_host(bind_host: str, override: str | None = None) -> str:
    """``override`` if given, else the bind host, else (bound to a wildcard) a routable address."""
    if override:
        return override
    return routable_host() if is_wildcard(bind_host) else bind_host
