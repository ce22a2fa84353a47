"""Fault tolerance with real processes: workers killed, drained or stalled mid-stream, etcd restarted.

Every scenario runs mocker workers slowed down so that a 64-token stream lasts about two seconds,
which leaves room to inject the fault while streams are in flight. Faults are injected on conditions
(every stream has received tokens, the frontend has seen a worker leave), never after fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynamo.runtime.discovery import registry
from tests.integration.nats_fixtures import nats_server  # noqa: F401  (fixture)
from tests.support.deploy import QWEN, Deployment, new_deployment
from tests.support.procs import async_wait_for, free_port, wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
# A mocker decode step is ~5.7 ms at low load; at 0.2x speed 64 tokens take ~2 s.
SLOW = ("--speedup-ratio", "0.2")
MAX_TOKENS = 64
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
STALL_WORKER = Path(__file__).with_name("stall_worker.py")

MIGRATIONS = "dynamo_frontend_model_migration_total"
SEQ_LEN_EXCEEDED = "dynamo_frontend_model_migration_max_seq_len_exceeded_total"
REQUESTS = "dynamo_frontend_requests_total"


# -- observing the frontend ----------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def workers_seen(url: str) -> float:
    try:
        return metric(scrape(url), "dynamo_frontend_model_workers", model=MODEL)
    except (httpx.HTTPError, ValueError):
        return -1


def wait_workers(url: str, count: int, timeout: float = 30.0) -> None:
    wait_for(lambda: workers_seen(url) == count, timeout, interval=0.1, what=f"{count} workers behind {url}")


def start_frontend(dep: Deployment, *extra: str) -> str:
    """A further frontend on the deployment's workers; returns its base URL."""
    port = free_port()
    dep.spawn(f"frontend-{port}", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port),
              *extra)
    return f"http://127.0.0.1:{port}"


def warm_up(url: str, count: int) -> int:
    """``count`` sequential requests (round-robin: one per worker); returns the prompt's token count."""
    prompt_tokens = 0
    for _ in range(count):
        r = httpx.post(url + "/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 200, r.text
        prompt_tokens = r.json()["usage"]["prompt_tokens"]
    return prompt_tokens


# -- streaming clients ---------------------------------------------------------------------------


@dataclass
class Outcome:
    text: str = ""
    chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    error: Any = None  # the payload of an ``event: error`` SSE event (or the client's exception)
    done: bool = False  # ``data: [DONE]`` arrived

    def complete(self, prompt_tokens: int) -> bool:
        # The mocker emits random token ids, so the text may hold U+FFFD; only its presence is checked.
        return (self.error is None and self.done and self.finish_reason == "length"
                and self.completion_tokens == MAX_TOKENS and self.prompt_tokens == prompt_tokens
                and bool(self.text.strip()))


class Progress:
    """Sets ``ready`` once ``streams`` streams have each received ``chunks`` text chunks."""

    def __init__(self, streams: int, chunks: int) -> None:
        self.streams = streams
        self.chunks = chunks
        self.started = 0
        self.ready = asyncio.Event()

    def tick(self, out: Outcome) -> None:
        out.chunks += 1
        if out.chunks == self.chunks:
            self.started += 1
            if self.started >= self.streams:
                self.ready.set()


StreamFn = Callable[[Progress], Awaitable[Outcome]]


def sse_stream(client: httpx.AsyncClient, url: str, **extra: Any) -> StreamFn:
    """A streaming completion read as raw SSE, so error events are seen exactly as sent."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, **extra}

    async def run(progress: Progress) -> Outcome:
        out = Outcome()
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            assert resp.status_code == 200, (await resp.aread()).decode()
            event = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    out.done = True
                elif event == "error":
                    out.error = json.loads(data)
                else:
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        out.completion_tokens = chunk["usage"]["completion_tokens"]
                        out.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    for choice in chunk["choices"]:
                        out.text += choice["text"]
                        out.finish_reason = choice["finish_reason"] or out.finish_reason
                        progress.tick(out)
                event = None
        return out

    return run


def openai_stream(client: openai.AsyncOpenAI) -> StreamFn:
    """A streaming completion through the official client: what an application would see."""

    async def run(progress: Progress) -> Outcome:
        out = Outcome()
        try:
            stream = await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True,
                                                     stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    out.completion_tokens = chunk.usage.completion_tokens
                    out.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices:
                    out.text += choice.text
                    out.finish_reason = choice.finish_reason or out.finish_reason
                    progress.tick(out)
            out.done = True
        except openai.APIError as exc:
            out.error = exc
        return out

    return run


async def streams_with_fault(groups: list[tuple[int, StreamFn]], fault: Callable[[], Awaitable[None]], *,
                             after_chunks: int = 8, started: int | None = None,
                             timeout: float = 45.0) -> list[list[Outcome]]:
    """Start every stream; once ``started`` of them (default all) have ``after_chunks`` chunks run
    ``fault``; return every stream's outcome, grouped like ``groups``.

    ``timeout`` bounds the whole run: a stream that hangs instead of ending fails the test.
    """
    progress = Progress(started if started is not None else sum(n for n, _ in groups), after_chunks)
    runs = [asyncio.gather(*(fn(progress) for _ in range(n))) for n, fn in groups]
    everything = asyncio.ensure_future(asyncio.gather(*runs))
    ready = asyncio.ensure_future(progress.ready.wait())
    try:
        done, _ = await asyncio.wait({everything, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            if everything.done():
                everything.result()
                raise AssertionError("the streams ended before the fault could be injected")
            raise AssertionError(f"only {progress.started} streams got going")
        await fault()
        return list(await asyncio.wait_for(everything, timeout))
    finally:
        ready.cancel()
        everything.cancel()
        with contextlib.suppress(BaseException):
            await everything


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def mockers(dep: Deployment, count: int, *extra: str) -> list[subprocess.Popen[bytes]]:
    return [dep.mocker(*SLOW, *extra, name=f"mocker{i}") for i in range(count)]


# -- worker loss mid-stream ----------------------------------------------------------------------


@pytest.mark.parametrize("plane", ["tcp", "nats", "http"])
def test_sigkill_mid_stream_with_migration_every_stream_completes(plane, request):
    env = {"DYN_REQUEST_PLANE": plane}
    if plane == "nats":
        env["NATS_SERVER"] = request.getfixturevalue("nats_server").url
    dep = new_deployment(env)
    try:
        workers = mockers(dep, 3)
        dep.start_frontend("--migration-limit", "2")
        wait_workers(dep.url, 3)
        prompt_tokens = warm_up(dep.url, 3)

        async def scenario() -> list[list[Outcome]]:
            async with openai.AsyncOpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0,
                                          timeout=60) as client:
                async def kill() -> None:
                    sigkill(workers[0])
                return await streams_with_fault([(50, openai_stream(client))], kill)

        [outcomes] = asyncio.run(scenario())
        broken = [o for o in outcomes if not o.complete(prompt_tokens)]
        assert not broken, f"{len(broken)} streams broken, e.g. {broken[0]}\n{dep.logs()}"

        m = scrape(dep.url)
        ongoing = metric(m, MIGRATIONS, model=MODEL, migration_type="ongoing_request")
        # Round-robin put about a third of the 50 streams on the killed worker; each moved once.
        assert 10 <= ongoing <= 25, ongoing
        assert metric(m, MIGRATIONS, model=MODEL, migration_type="new_request") == 0
        assert metric(m, REQUESTS, model=MODEL, request_type="stream", status="success") == 50
        assert metric(m, REQUESTS, model=MODEL, status="error") == 0
    finally:
        dep.close()


def test_sigkill_mid_stream_without_migration_ends_affected_streams_with_an_error_event():
    dep = new_deployment()
    try:
        workers = mockers(dep, 3)
        dep.start_frontend()  # --migration-limit defaults to 0
        # Migration allowed, but not for guided decoding nor for sequences longer than 8 tokens.
        capped = start_frontend(dep, "--migration-limit", "2", "--migration-max-seq-len", "8")
        wait_workers(dep.url, 3)
        wait_workers(capped, 3)
        prompt_tokens = warm_up(dep.url, 3)
        warm_up(capped, 3)
        assert prompt_tokens > 8

        async def scenario() -> list[list[Outcome]]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
                async def kill() -> None:
                    sigkill(workers[0])
                return await streams_with_fault([
                    (50, sse_stream(client, dep.url)),
                    (12, sse_stream(client, capped)),
                    (12, sse_stream(client, capped, guided_json={"type": "object"})),
                ], kill)

        plain, too_long, guided = asyncio.run(scenario())
        for name, outcomes in (("no migration", plain), ("max seq len", too_long), ("guided", guided)):
            failed = [o for o in outcomes if o.error is not None]
            # The streams on the killed worker end with an error event after their first tokens...
            assert 1 <= len(failed) <= len(outcomes) // 2 + 1, (name, len(failed))
            for o in failed:
                assert o.chunks >= 8 and not o.done and o.completion_tokens is None, o
                assert o.error["error"]["message"], o.error
            # ...and every other stream is untouched.
            assert all(o.complete(prompt_tokens) for o in outcomes if o.error is None), name

        m = scrape(dep.url)
        assert metric(m, MIGRATIONS) == 0
        failed_plain = sum(o.error is not None for o in plain)
        assert metric(m, REQUESTS, model=MODEL, request_type="stream", status="error") == failed_plain
        assert metric(m, REQUESTS, model=MODEL, request_type="stream", status="success") == 50 - failed_plain
        m = scrape(capped)
        assert metric(m, MIGRATIONS) == 0
        # Guided requests never try to migrate, so only the long unguided ones count as skipped.
        assert metric(m, SEQ_LEN_EXCEEDED, model=MODEL) == sum(o.error is not None for o in too_long)
    finally:
        dep.close()


def _unread_bytes(pid: int) -> int:
    """Bytes waiting in the receive queues of ``pid``'s established TCP sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[9] in inodes and cols[3] == "01":
                    total += int(cols[4].split(":")[1], 16)
    return total


def test_worker_killed_before_acknowledging_is_retried_as_a_new_request():
    # The ack wait must outlast the frozen worker, so the failure the frontend sees is the kill.
    dep = new_deployment({"DYN_TCP_REQUEST_TIMEOUT": "60"})
    try:
        # No frontend flag: the workers' cards ask for migration and the frontend takes the larger limit.
        workers = mockers(dep, 3, "--migration-limit", "2")
        dep.start_frontend()
        wait_workers(dep.url, 3)
        prompt_tokens = warm_up(dep.url, 3)  # one connection per worker, so requests queue in its socket
        assert metric(scrape(dep.url), "dynamo_frontend_model_migration_limit", model=MODEL) == 2

        frozen = workers[0]
        frozen.send_signal(signal.SIGSTOP)

        async def scenario() -> list[list[Outcome]]:
            async with httpx.AsyncClient(timeout=60) as client:
                async def kill() -> None:
                    # The frozen worker's requests sit unread in its socket: it never produced a token.
                    await async_wait_for(lambda: _unread_bytes(frozen.pid) > 0, 10, what="request to reach it")
                    sigkill(frozen)
                # 6 streams round-robin over 3 workers: 4 run, 2 wait on the frozen worker.
                return await streams_with_fault([(6, sse_stream(client, dep.url))], kill, after_chunks=1, started=4)

        try:
            [outcomes] = asyncio.run(scenario())
        finally:
            with contextlib.suppress(ProcessLookupError):
                frozen.send_signal(signal.SIGCONT)
        assert all(o.complete(prompt_tokens) for o in outcomes), outcomes
        m = scrape(dep.url)
        assert 1 <= metric(m, MIGRATIONS, model=MODEL, migration_type="new_request") <= 2
        assert metric(m, MIGRATIONS, model=MODEL, migration_type="ongoing_request") == 0
    finally:
        dep.close()


# -- graceful drain ------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_streams_and_routes_new_ones_elsewhere():
    dep = new_deployment({"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30"})
    try:
        workers = mockers(dep, 3)
        dep.start_frontend()  # no migration: a drain alone must lose nothing
        wait_workers(dep.url, 3)
        prompt_tokens = warm_up(dep.url, 3)
        drained = workers[0]

        async def scenario() -> tuple[list[list[Outcome]], list[Outcome]]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
                second: list[Outcome] = []

                async def drain() -> None:
                    drained.send_signal(signal.SIGTERM)
                    await async_wait_for(lambda: workers_seen(dep.url) == 2, 5, what="the drained worker to leave")
                    assert drained.poll() is None, "the worker must still be finishing its streams"
                    # Frozen, the drained worker could not give a new request a single token.
                    drained.send_signal(signal.SIGSTOP)
                    try:
                        progress = Progress(20, 1)
                        late = sse_stream(client, dep.url)
                        tasks = [asyncio.ensure_future(late(progress)) for _ in range(20)]
                        await asyncio.wait_for(progress.ready.wait(), 15)
                    finally:
                        drained.send_signal(signal.SIGCONT)
                    second.extend(await asyncio.wait_for(asyncio.gather(*tasks), 30))

                first = await streams_with_fault([(30, sse_stream(client, dep.url))], drain)
                return first, second

        [first], second = asyncio.run(scenario())
        assert all(o.complete(prompt_tokens) for o in first + second), [o for o in first + second if o.error]
        assert drained.wait(15) == 0
        m = scrape(dep.url)
        assert metric(m, MIGRATIONS) == 0
        assert metric(m, REQUESTS, model=MODEL, request_type="stream", status="success") == 50
        assert metric(m, REQUESTS, model=MODEL, status="error") == 0
    finally:
        dep.close()


def test_sigterm_streams_left_after_the_grace_period_are_migrated():
    dep = new_deployment()
    try:
        short = dep.spawn("mocker0", "-m", "dynamo.mocker", "--model-path", str(QWEN), *SLOW,
                          env={"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0.3"})
        mockers(dep, 2)
        dep.start_frontend("--migration-limit", "2")
        wait_workers(dep.url, 3)
        prompt_tokens = warm_up(dep.url, 3)

        async def scenario() -> list[list[Outcome]]:
            async with httpx.AsyncClient(timeout=60) as client:
                async def term() -> None:
                    short.send_signal(signal.SIGTERM)
                return await streams_with_fault([(30, sse_stream(client, dep.url))], term)

        [outcomes] = asyncio.run(scenario())
        assert all(o.complete(prompt_tokens) for o in outcomes), [o for o in outcomes if not o.complete(prompt_tokens)]
        assert short.wait(15) == 0
        m = scrape(dep.url)
        migrated = metric(m, MIGRATIONS, model=MODEL, migration_type="ongoing_request")
        assert 5 <= migrated <= 15  # round-robin gave the drained worker ~10 of the 30
        assert metric(m, REQUESTS, model=MODEL, status="error") == 0

        # A client that walks away is a cancellation, never a migration.
        asyncio.run(_abandon_a_stream(dep.url))
        wait_for(lambda: metric(scrape(dep.url), "dynamo_frontend_model_cancellation_total", model=MODEL) == 1,
                 10, interval=0.1, what="the cancellation to be counted")
        assert metric(scrape(dep.url), MIGRATIONS) == migrated
    finally:
        dep.close()


async def _abandon_a_stream(url: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        progress = Progress(1, 3)
        task = asyncio.ensure_future(sse_stream(client, url)(progress))
        try:
            await asyncio.wait_for(progress.ready.wait(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- a worker that stops talking -----------------------------------------------------------------


def _stall_worker(dep: Deployment, tokens: int) -> tuple[subprocess.Popen[bytes], Path]:
    record = dep.logdir / f"stall-{uuid.uuid4().hex[:6]}.txt"
    record.touch()
    proc = dep.spawn("stall", str(STALL_WORKER), "--model-path", str(QWEN), "--tokens", str(tokens),
                     "--record", str(record))
    return proc, record


def _received(record: Path) -> int:
    return len(record.read_text().splitlines())


def test_stalled_worker_is_detected_and_its_streams_migrated():
    dep = new_deployment()
    try:
        mockers(dep, 2)
        dep.start_frontend("--migration-limit", "2", "--stream-stall-timeout", "1")
        wait_workers(dep.url, 2)
        stall, record = _stall_worker(dep, tokens=3)
        wait_workers(dep.url, 3)

        async def scenario() -> list[Outcome]:
            async with httpx.AsyncClient(timeout=60) as client:
                progress = Progress(6, 1)
                run = sse_stream(client, dep.url)
                return await asyncio.wait_for(asyncio.gather(*(run(progress) for _ in range(6))), 30)

        t0 = time.monotonic()
        outcomes = asyncio.run(scenario())
        elapsed = time.monotonic() - t0
        prompt_tokens = next(o.prompt_tokens for o in outcomes if o.prompt_tokens)
        assert all(o.complete(prompt_tokens) for o in outcomes), [o for o in outcomes if not o.complete(prompt_tokens)]
        stalled = _received(record)
        assert stalled >= 1  # round-robin sent it its share
        m = scrape(dep.url)
        # Each stalled stream moved exactly once: the silent worker got none of the retries.
        assert metric(m, MIGRATIONS, model=MODEL, migration_type="ongoing_request") == stalled
        assert elapsed < 15
        assert stall.poll() is None, "the stalled worker kept its connection the whole time"
    finally:
        dep.close()


def test_worker_killed_after_accepting_but_before_its_first_token_is_a_new_request():
    dep = new_deployment()
    try:
        mockers(dep, 2)
        dep.start_frontend("--migration-limit", "1")
        wait_workers(dep.url, 2)
        silent, record = _stall_worker(dep, tokens=0)
        wait_workers(dep.url, 3)

        async def scenario() -> list[list[Outcome]]:
            async with httpx.AsyncClient(timeout=60) as client:
                async def kill() -> None:
                    # 6 streams round-robin over 3 workers: the silent one holds 2 without a token.
                    await async_wait_for(lambda: _received(record) >= 2, 10, what="the silent worker's share")
                    sigkill(silent)
                return await streams_with_fault([(6, sse_stream(client, dep.url))], kill, after_chunks=1, started=4)

        [outcomes] = asyncio.run(scenario())
        prompt_tokens = next(o.prompt_tokens for o in outcomes if o.prompt_tokens)
        assert all(o.complete(prompt_tokens) for o in outcomes), outcomes
        m = scrape(dep.url)
        assert metric(m, MIGRATIONS, model=MODEL, migration_type="new_request") == 2
        assert metric(m, MIGRATIONS, model=MODEL, migration_type="ongoing_request") == 0
    finally:
        dep.close()


# -- infrastructure restarts ---------------------------------------------------------------------


async def _registered_instances(etcd_url: str, namespace: str, expected: int) -> bool:
    host, port = etcd_url.removeprefix("http://").split(":")
    client = aetcd.Client(host=host, port=int(port), timeout=2)
    try:
        # One ``generate`` instance per worker (workers also serve ``kv_dump``).
        res = await client.get_prefix(registry.instances_prefix(namespace, "backend", "generate").encode())
        return len(res.kvs) == expected
    except Exception:  # etcd still starting: not settled yet
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.mark.parametrize("outage", [3.0, 12.0], ids=["shorter-than-lease", "longer-than-lease"])
def test_etcd_restart_under_steady_load_drops_no_request(etcd_server, outage):
    ns = f"ft{uuid.uuid4().hex[:8]}"
    dep = new_deployment({"ETCD_ENDPOINTS": etcd_server.url})
    flags = ("--store-kv", "etcd", "--namespace", ns)
    try:
        workers = [dep.mocker("--speedup-ratio", "0.5", *flags, name=f"mocker{i}") for i in range(3)]
        dep.start_frontend(*flags)
        wait_workers(dep.url, 3)

        async def scenario() -> tuple[int, list[str]]:
            ok = 0
            attempts = 0
            failures: list[str] = []
            stop = asyncio.Event()

            async def user(client: httpx.AsyncClient) -> None:
                nonlocal ok, attempts
                run = sse_stream(client, dep.url, max_tokens=16)
                while not stop.is_set():
                    attempts += 1
                    try:
                        out = await run(Progress(1, 1))
                    except Exception as exc:  # every outcome is counted and asserted on
                        failures.append(repr(exc))
                        continue
                    if out.error is None and out.completion_tokens == 16:
                        ok += 1
                    else:
                        failures.append(repr(out))

            async with httpx.AsyncClient(timeout=30) as client:
                users = [asyncio.ensure_future(user(client)) for _ in range(6)]
                try:
                    await async_wait_for(lambda: ok >= 20, 20, what="steady load")
                    await asyncio.to_thread(etcd_server.stop)
                    await asyncio.sleep(outage)  # the outage itself is the scenario, not a wait
                    await asyncio.to_thread(etcd_server.start)
                    # Routing has settled once every worker is registered again and served traffic.
                    await async_wait_for(lambda: _registered_instances(etcd_server.url, ns, 3), 20, interval=0.2,
                                         what="all three workers registered again")
                    settled = ok
                    await async_wait_for(lambda: ok >= settled + 20, 20, what="load after the restart")
                finally:
                    stop.set()
                    ended = await asyncio.wait_for(asyncio.gather(*users, return_exceptions=True), 30)
            # A user task that died would stop generating load without any failure being recorded.
            failures.extend(repr(e) for e in ended if e is not None)
            assert ok + len(failures) == attempts, (ok, len(failures), attempts)
            return ok, failures

        try:
            ok, failures = asyncio.run(scenario())
        finally:
            if etcd_server.proc is None:
                etcd_server.start()
        assert not failures, f"{len(failures)} failed, e.g. {failures[0]}\n{dep.logs()}"
        assert all(w.poll() is None for w in workers), dep.logs()
        assert workers_seen(dep.url) == 3
        m = scrape(dep.url)
        assert metric(m, REQUESTS, model=MODEL, request_type="stream", status="success") == ok
        assert metric(m, REQUESTS, model=MODEL, status="error") == 0
    finally:
        dep.close()

