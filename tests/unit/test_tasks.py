"""Supervised background tasks: restart after failure, back off, report state."""

from __future__ import annotations

import asyncio
import time

import pytest

from dynamo.runtime import tasks
from tests.support.procs import async_wait_for

pytestmark = pytest.mark.unit


async def test_loop_failing_once_is_restarted_and_then_works():
    runs = []
    done = asyncio.Event()

    async def loop():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first record was malformed")
        done.set()
        await asyncio.Event().wait()  # keeps running, healthy

    sup = tasks.supervise("test once", loop, initial_backoff=0.01)
    try:
        await asyncio.wait_for(done.wait(), 5)
        assert sup.restarts == 1 and sup.state is tasks.TaskState.RUNNING
        assert sup.last_error == "RuntimeError: first record was malformed"
        assert tasks.restart_counts()["test once"] >= 1
        # Recently failed: health reports it as flapping until it has run cleanly for reset_after.
        assert any(t["name"] == "test once" for t in tasks.failing())
    finally:
        await sup.stop()
    assert sup.state is tasks.TaskState.DONE
    assert all(t["name"] != "test once" for t in tasks.snapshot())


async def test_always_failing_loop_backs_off():
    async def broken():
        raise OSError("socket gone")

    sup = tasks.supervise("test always", broken, initial_backoff=0.05, max_backoff=0.2)
    start = time.monotonic()
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - start
    await sup.stop()
    # Backoff 0.05, 0.1, 0.2, 0.2, ...: about 6 restarts in a second, never a busy loop.
    assert 3 <= sup.restarts <= 8, (sup.restarts, elapsed)
    assert sup.failures >= sup.restarts


async def test_failing_task_shows_in_health_and_metrics():
    async def broken():
        raise ValueError("bad")

    sup = tasks.supervise("test health", broken, initial_backoff=0.5)
    try:
        await async_wait_for(lambda: sup.state is tasks.TaskState.BACKOFF, 5)
        (entry,) = [t for t in tasks.failing() if t["name"] == "test health"]
        assert entry["state"] == "backoff" and entry["last_error"] == "ValueError: bad"
        from prometheus_client import REGISTRY, generate_latest

        await async_wait_for(lambda: sup.restarts >= 1, 5)
        assert b'dynamo_background_task_restarts_total{task="test health"}' in generate_latest(REGISTRY)
    finally:
        await sup.stop()


async def test_no_restart_leaves_task_failed_and_visible():
    async def broken():
        raise ValueError("fatal")

    sup = tasks.supervise("test no restart", broken, restart=False)
    await asyncio.wait_for(asyncio.shield(sup.task), 5)
    assert sup.state is tasks.TaskState.FAILED and sup.restarts == 0
    assert any(t["name"] == "test no restart" for t in tasks.failing())


async def test_normal_return_is_not_restarted():
    runs = []

    async def once():
        runs.append(1)

    sup = tasks.supervise("test return", once)
    await asyncio.wait_for(asyncio.shield(sup.task), 5)
    assert runs == [1] and sup.state is tasks.TaskState.DONE


async def test_spawn_keeps_a_reference_and_logs_failure(caplog):
    async def boom():
        raise RuntimeError("publish failed")

    task = tasks.spawn(boom(), "test spawn")
    assert task in tasks._spawned
    with pytest.raises(RuntimeError):
        await task
    await asyncio.sleep(0)
    assert task not in tasks._spawned
    assert "test spawn" in caplog.text and "publish failed" in caplog.text
