"""Readiness of a worker process as the system status server reports it (reference §1.8).

``ready`` means: the engine is up (the worker said so with :meth:`SystemHealth.set_engine_ready`),
every endpoint it serves is registered in discovery, every endpoint named in
``DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS`` is among them, and the process is not draining. Anything
else is ``notready``: Kubernetes keeps the pod out of its Service until then, and takes it out again
as soon as a SIGTERM starts the drain.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from dynamo.runtime import errors

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

READY, NOT_READY = "ready", "notready"


def _required_endpoints() -> list[str]:
    raw = os.environ.get("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS")
    if not raw:
        return []
    try:
        names = json.loads(raw)
    except ValueError as exc:
        raise errors.ConfigError(
            f"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS={raw!r} is not a JSON list of endpoint names") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise errors.ConfigError(
            f"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS={raw!r} is not a JSON list of endpoint names")
    return names


def _starting_status() -> bool:
    raw = (os.environ.get("DYN_SYSTEM_STARTING_HEALTH_STATUS") or NOT_READY).lower()
    if raw not in (READY, NOT_READY):
        raise errors.ConfigError(
            f"DYN_SYSTEM_STARTING_HEALTH_STATUS={raw!r} must be 'ready' or 'notready'")
    return raw == READY


class SystemHealth:
    def __init__(self, runtime: DistributedRuntime) -> None:
        self._runtime = runtime
        self.started = time.monotonic()
        self.required = _required_endpoints()
        self.engine_ready = _starting_status()
        self.draining = False

    def set_engine_ready(self, ready: bool = True) -> None:
        """Called by the worker once its engine is up and its endpoints and model are registered."""
        self.engine_ready = ready

    def endpoints(self) -> dict[str, str]:
        status: dict[str, str] = {}
        for served in self._runtime.served:
            name = served.endpoint.name
            ok = served.registered and not self.draining
            # Several instances of one endpoint (mocker --num-workers): ready only if all are.
            status[name] = READY if ok and status.get(name, READY) == READY else NOT_READY
        for name in self.required:
            status.setdefault(name, NOT_READY)
        return status

    def is_ready(self) -> bool:
        if not self.engine_ready or self.draining or not self._runtime.served:
            return False
        return all(s == READY for s in self.endpoints().values())

    def report(self) -> dict[str, Any]:
        up = time.monotonic() - self.started
        return {
            "status": READY if self.is_ready() else NOT_READY,
            "endpoints": self.endpoints(),
            "uptime": {"secs": int(up), "nanos": int((up - int(up)) * 1e9)},
        }
