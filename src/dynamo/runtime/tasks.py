"""Supervised background tasks: a loop that raises is logged, restarted with backoff, and reported.

Without supervision a background loop (a discovery follower, an event consumer, a ZMQ receive loop)
that hits one malformed record or one socket error ends silently, and the process keeps serving
with stale state. ``supervise(name, factory)`` runs ``factory()`` in a task that

- logs every failure with the task's name and traceback,
- restarts it after an exponential backoff (``initial_backoff`` doubling up to ``max_backoff``; a
  run that lasted ``reset_after`` seconds counts as healthy and resets the backoff),
- keeps a strong reference to the task (the event loop holds only weak ones),
- counts restarts in ``dynamo_background_task_restarts_total{task}``,
- and exposes its state (:func:`snapshot`, :func:`failing`) for health endpoints.

``factory`` must return a fresh coroutine each call. A loop over a resumable iterator (a store
``Watch``, an ``EventSubscriber``) simply continues with the next item after a restart. A coroutine
that returns normally is finished, not restarted; cancelling the supervised task stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CoroFactory = Callable[[], Coroutine[Any, Any, Any]]


class TaskState(str, enum.Enum):
    RUNNING = "running"
    BACKOFF = "backoff"  # failed; waiting to restart
    FAILED = "failed"  # failed with restart=False: stays down
    DONE = "done"  # returned normally or was cancelled


class SupervisedTask:
    """Handle of one supervised loop; ``await stop()`` (or ``cancel()``) to end it."""

    def __init__(self, name: str, factory: CoroFactory, *, restart: bool, initial_backoff: float,
                 max_backoff: float, reset_after: float) -> None:
        self.name = name
        self._factory = factory
        self.restart = restart
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.reset_after = reset_after
        self.state = TaskState.RUNNING
        self.restarts = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_failure_at: float | None = None  # time.monotonic()
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def _run(self) -> None:
        backoff = self.initial_backoff
        try:
            while True:
                started = time.monotonic()
                self.state = TaskState.RUNNING
                try:
                    await self._factory()
                    return
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.last_failure_at = time.monotonic()
                    if not self.restart:
                        self.state = TaskState.FAILED
                        logger.exception("background task %r failed; not restarting", self.name)
                        return
                    if self.last_failure_at - started >= self.reset_after:
                        backoff = self.initial_backoff
                    self.state = TaskState.BACKOFF
                    logger.exception("background task %r failed; restarting in %.2gs (restart #%d)",
                                     self.name, backoff, self.restarts + 1)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                self.restarts += 1
                _count_restart(self.name)
        finally:
            if self.state is TaskState.FAILED:
                _failed.append(self)
                del _failed[:-_KEEP_FAILED]
            else:
                self.state = TaskState.DONE
            _live.discard(self)

    def is_failing(self, now: float | None = None) -> bool:
        """Down, waiting to restart, or failed within the last ``reset_after`` seconds (flapping)."""
        if self.state in (TaskState.BACKOFF, TaskState.FAILED):
            return True
        if self.last_failure_at is None or self.state is TaskState.DONE:
            return False
        now = time.monotonic() if now is None else now
        return now - self.last_failure_at < self.reset_after

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "restarts": self.restarts,
                "last_error": self.last_error, "failing": self.is_failing()}

    def cancel(self) -> None:
        self.task.cancel()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def done(self) -> bool:
        return self.task.done()


# Strong references: asyncio keeps only weak ones, and a collected task vanishes without a trace.
_live: set[SupervisedTask] = set()
# FAILED tasks are no longer live but must stay visible to health checks (the latest few).
_failed: list[SupervisedTask] = []
_KEEP_FAILED = 100


def supervise(name: str, factory: CoroFactory, *, restart: bool = True, initial_backoff: float = 0.1,
              max_backoff: float = 30.0, reset_after: float = 60.0) -> SupervisedTask:
    """Run ``factory()`` as a supervised background task (see the module docstring).

    ``name`` labels the restart metric: name the role ("kv-router kv-events consumer"), not an id.
    """
    task = SupervisedTask(name, factory, restart=restart, initial_backoff=initial_backoff,
                          max_backoff=max_backoff, reset_after=reset_after)
    _live.add(task)
    return task


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Fire-and-forget a one-shot coroutine: keep a reference until it ends and log its failure."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _spawned.add(task)
    task.add_done_callback(_spawned_done)
    return task


_spawned: set[asyncio.Task[Any]] = set()


def _spawned_done(task: asyncio.Task[Any]) -> None:
    _spawned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        logger.error("background task %r failed: %s: %s", task.get_name(), type(exc).__name__, exc,
                     exc_info=exc)


def snapshot() -> list[dict[str, Any]]:
    """State of every supervised task of this process (for health endpoints and debugging)."""
    return [t.describe() for t in sorted([*_live, *_failed], key=lambda t: t.name)]


def failing() -> list[dict[str, Any]]:
    """The supervised tasks that are down or flapping; empty when all is well."""
    now = time.monotonic()
    return [t.describe() for t in sorted([*_live, *_failed], key=lambda t: t.name) if t.is_failing(now)]


# -- metrics ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_restarts: dict[str, int] = {}


def _count_restart(name: str) -> None:
    with _lock:
        _restarts[name] = _restarts.get(name, 0) + 1


def restart_counts() -> dict[str, int]:
    with _lock:
        return dict(_restarts)


class TaskRestartsCollector(Collector):
    """``dynamo_background_task_restarts_total{task}``; register in any registry that should show it."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("dynamo_background_task_restarts",
                                     "Restarts of supervised background tasks after a failure", labels=["task"])
        for name, count in restart_counts().items():
            family.add_metric([name], count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("dynamo_background_task_restarts",
                                  "Restarts of supervised background tasks after a failure", labels=["task"])


COLLECTOR = TaskRestartsCollector()
with contextlib.suppress(ValueError):  # a re-imported copy of this module: already registered
    REGISTRY.register(COLLECTOR)
