"""Liveness of request-plane connections: application pings on the connection plus TCP keepalive.

A peer that vanishes without FIN/RST (power loss, a partition, a frozen process whose kernel still
ACKs) leaves the socket open forever: reads simply never return. Each side of a connection therefore
sends a ``ping`` frame every ``interval`` seconds, answers every ``ping`` with a ``pong``, and declares
the peer dead when nothing at all has arrived from it for ``timeout`` seconds. Any frame counts, so a
busy stream needs no extra traffic, and an idle but healthy stream is kept alive by the pongs. Each
side judges by its own pings, so the two ends may be configured differently.

TCP keepalive (and ``TCP_USER_TIMEOUT`` for unacknowledged writes) is set as well: it catches a dead
host at the kernel level even where the application heartbeat is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from dynamo.runtime import errors

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECS = 2.0
DEFAULT_TIMEOUT_SECS = 8.0
# Kernel keepalive when the application heartbeat is off: notice a dead host within ~2 minutes.
_FALLBACK_KEEPALIVE = (60, 10, 6)  # idle, interval, probes


def _env_secs(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable {name}={raw!r} is not a number of seconds") from exc
    if value < 0:
        raise errors.ConfigError(f"environment variable {name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class HeartbeatSettings:
    """``interval`` seconds between pings (0 disables the heartbeat); ``timeout`` seconds of silence
    from the peer after which it is considered dead. A dead peer is noticed within
    ``timeout + interval`` seconds."""

    interval: float = DEFAULT_INTERVAL_SECS
    timeout: float = DEFAULT_TIMEOUT_SECS

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    @classmethod
    def from_env(cls) -> HeartbeatSettings:
        interval = _env_secs("DYN_TCP_HEARTBEAT_SECS", DEFAULT_INTERVAL_SECS)
        timeout = _env_secs("DYN_TCP_HEARTBEAT_TIMEOUT_SECS", max(DEFAULT_TIMEOUT_SECS, 4 * interval))
        if interval > 0 and timeout <= interval:
            raise errors.ConfigError(
                f"DYN_TCP_HEARTBEAT_TIMEOUT_SECS ({timeout}) must exceed DYN_TCP_HEARTBEAT_SECS ({interval}): "
                "a peer needs at least one ping interval to answer")
        return cls(interval, timeout)


def set_keepalive(sock: socket.socket | None, settings: HeartbeatSettings) -> None:
    """Enable TCP keepalive tuned to the heartbeat (best effort: options missing on a platform are skipped)."""
    if sock is None:
        return
    if settings.enabled:
        idle, interval, probes = max(1, int(settings.timeout)), max(1, int(settings.interval)), 3
    else:
        idle, interval, probes = _FALLBACK_KEEPALIVE
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", probes)):
        opt = getattr(socket, name, None)
        if opt is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if settings.enabled and user_timeout is not None:
        # Data written to a vanished host and never acknowledged fails the socket after this long.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, int(settings.timeout * 1000))


class Heartbeat:
    """Pings the peer of one connection and reports it dead after ``settings.timeout`` of silence.

    The owner calls :meth:`seen` whenever bytes arrive and :meth:`stop` when the connection closes.
    """

    __slots__ = ("_handle", "_on_dead", "_send_ping", "last_rx", "settings")

    def __init__(self, settings: HeartbeatSettings, send_ping: Callable[[], None],
                 on_dead: Callable[[str], None]) -> None:
        self.settings = settings
        self._send_ping = send_ping
        self._on_dead = on_dead
        self._handle: asyncio.TimerHandle | None = None
        self.last_rx = time.monotonic()

    def start(self) -> None:
        if self.settings.enabled:
            self.last_rx = time.monotonic()
            self._handle = asyncio.get_running_loop().call_later(self.settings.interval, self._tick)

    def seen(self) -> None:
        self.last_rx = time.monotonic()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        silent = time.monotonic() - self.last_rx
        if silent > self.settings.timeout:
            self._handle = None
            self._on_dead(f"no frame from the peer for {silent:.1f}s (heartbeat timeout "
                          f"{self.settings.timeout:g}s)")
            return
        self._send_ping()
        self._handle = asyncio.get_running_loop().call_later(self.settings.interval, self._tick)
