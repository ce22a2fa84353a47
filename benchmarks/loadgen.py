"""A light closed-loop load generator for OpenAI-style streaming chat completions.

Written on raw asyncio protocols (no HTTP library) so it costs little CPU: on a 2-core machine the
client competes with the system under test, and it must be identical for every system compared.
Each virtual user owns one keep-alive HTTP/1.1 connection with TCP_NODELAY set, and re-arms
TCP_QUICKACK after every read so the server never waits on our delayed ACKs (servers that write small
SSE frames without TCP_NODELAY would otherwise show ~40 ms stalls that are the client's fault).

Used by ``serve_bench.py``; the public pieces are :class:`RequestRecord`, :class:`LevelResult`,
:func:`run_level` and :func:`percentile`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_TOKEN_MARK = b'content":"'  # matches both "content" and "reasoning_content" deltas
_USAGE_MARK = b'"usage":{'


@dataclass(slots=True)
class RequestRecord:
    """Timings of one streamed request (perf_counter seconds)."""

    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each non-empty content delta
    output_tokens: int = 0  # usage.completion_tokens when reported, else the number of content deltas
    prompt_tokens: int | None = None
    error: str | None = None


class _ResponseError(Exception):
    pass


class _StreamingConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection that parses a chunked SSE response incrementally."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._events = bytearray()
        self._record: RequestRecord | None = None
        self._done: asyncio.Future[None] | None = None
        self._in_headers = True
        self._chunked = False
        self._remaining = -1  # bytes left of the current chunk / fixed-length body; -1 = read size line
        self._status = 0
        self._keep_alive = True
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            if self._record is not None and not self._in_headers and not self._chunked and self._remaining < 0:
                self._finish()  # close-delimited body: the close is the end
            else:
                self._done.set_exception(_ResponseError(f"connection lost: {exc or 'closed by server'}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if _QUICKACK is not None and self._sock is not None:
            # Linux clears QUICKACK again on its own, so it has to be re-armed after each read
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        if self._record is None:
            return
        self._buf += data
        try:
            self._parse(now)
        except _ResponseError as e:
            if self._done is not None and not self._done.done():
                self._done.set_exception(e)
            if self._transport is not None:
                self._transport.close()

    # -- request ----------------------------------------------------------------------------
    async def request(self, head: bytes, body: bytes, record: RequestRecord) -> None:
        assert self._transport is not None
        self._record = record
        self._done = asyncio.get_running_loop().create_future()
        self._in_headers, self._chunked, self._remaining, self._status = True, False, -1, 0
        self._buf.clear()
        self._events.clear()
        self._transport.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        try:
            await self._done
        finally:
            self._record = None
            self._done = None

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- parsing ----------------------------------------------------------------------------
    def _parse(self, now: float) -> None:
        buf = self._buf
        if self._in_headers:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            self._status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip().lower()
            self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
            self._keep_alive = headers.get(b"connection", b"") != b"close"
            if not self._chunked:
                length = headers.get(b"content-length")
                self._remaining = int(length) if length is not None else -1
            self._in_headers = False
        if self._chunked:
            while True:
                if self._remaining < 0:
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        return
                    size_text = bytes(buf[:eol]).split(b";", 1)[0].strip()
                    try:
                        size = int(size_text, 16)
                    except ValueError as e:
                        raise _ResponseError(f"bad chunk size {size_text!r}") from e
                    if size == 0:
                        # last-chunk: wait for the terminating CRLF (no trailers expected)
                        if len(buf) < eol + 4:
                            return
                        del buf[: eol + 4]
                        self._finish()
                        return
                    del buf[: eol + 2]
                    self._remaining = size
                if len(buf) < self._remaining + 2:
                    return
                self._body(bytes(buf[: self._remaining]), now)
                del buf[: self._remaining + 2]
                self._remaining = -1
        else:
            if self._remaining >= 0:
                take = min(len(buf), self._remaining)
                self._body(bytes(buf[:take]), now)
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._finish()
            else:
                self._body(bytes(buf), now)
                buf.clear()

    def _body(self, data: bytes, now: float) -> None:
        rec = self._record
        assert rec is not None
        self._events += data
        if self._status != 200:
            return  # kept whole for the error message
        ev = self._events
        while True:
            end = ev.find(b"\n\n")
            if end < 0:
                return
            event = bytes(ev[:end])
            del ev[: end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    continue
                pos = payload.find(_TOKEN_MARK)
                while pos >= 0:
                    nxt = pos + len(_TOKEN_MARK)
                    if nxt < len(payload) and payload[nxt] != 0x22:  # non-empty string
                        rec.token_times.append(now)
                        break
                    pos = payload.find(_TOKEN_MARK, nxt)
                if _USAGE_MARK in payload:
                    self._usage(payload, rec)
                elif payload.startswith(b'{"error') or b'"error":{' in payload:
                    rec.error = payload[:200].decode(errors="replace")

    @staticmethod
    def _usage(payload: bytes, rec: RequestRecord) -> None:
        try:
            usage = json.loads(payload).get("usage") or {}
        except ValueError:
            return
        if "completion_tokens" in usage:
            rec.output_tokens = int(usage["completion_tokens"])
        if "prompt_tokens" in usage:
            rec.prompt_tokens = int(usage["prompt_tokens"])

    def _finish(self) -> None:
        rec = self._record
        assert rec is not None and self._done is not None
        rec.end = time.perf_counter()
        if self._status != 200:
            rec.error = f"HTTP {self._status}: {bytes(self._events[:300]).decode(errors='replace')}"
        elif not rec.output_tokens:
            rec.output_tokens = len(rec.token_times)
        if not self._done.done():
            self._done.set_result(None)


@dataclass(slots=True)
class LevelResult:
    """What one concurrency level measured inside its window."""

    concurrency: int
    window_s: float
    records: list[RequestRecord]  # requests that completed inside the window
    errors: list[str]
    probes_start: dict[str, float]
    probes_end: dict[str, float]

    @property
    def completed(self) -> int:
        return len(self.records)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def run_level(
    host: str,
    port: int,
    bodies: Iterator[bytes],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float | None = None,
    requests: int | None = None,
    probe: Callable[[], dict[str, float]] = dict,
    path: str = "/v1/chat/completions",
    timeout_s: float = 120.0,
) -> LevelResult:
    """Run ``concurrency`` closed-loop users; measure a window after ``warmup_s`` of warm-up.

    With ``duration_s`` the window is that long and holds the requests that completed in it (steady
    state: in-flight work straddles both edges equally). With ``requests`` the window runs from the
    end of warm-up until that many requests, started after warm-up, have all completed.
    ``probe`` is called at both window edges (e.g. to read a server's CPU time).
    """
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    loop = asyncio.get_running_loop()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: ").encode()
    t0 = time.perf_counter()
    window_start = t0 + warmup_s
    window_end = window_start + duration_s if duration_s is not None else float("inf")
    state: dict[str, float | dict[str, float]] = {}
    records: list[RequestRecord] = []
    errors: list[str] = []
    budget = itertools.count() if requests is not None else None
    in_window_started = asyncio.Event()

    async def connect() -> _StreamingConnection:
        _, proto = await loop.create_connection(_StreamingConnection, host, port)
        return proto

    async def user() -> None:
        conn = await connect()
        try:
            while True:
                now = time.perf_counter()
                if now >= window_end:
                    return
                counted = now >= window_start
                if budget is not None and counted:
                    if next(budget) >= requests:  # type: ignore[operator]
                        return
                    in_window_started.set()
                if not conn.reusable:
                    conn.close()
                    conn = await connect()
                rec = RequestRecord(start=time.perf_counter())
                try:
                    await asyncio.wait_for(conn.request(head, next(bodies), rec), timeout_s)
                except (_ResponseError, OSError, TimeoutError) as e:
                    rec.error = rec.error or f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = await connect()
                if rec.error is not None:
                    if rec.start >= window_start:
                        errors.append(rec.error)
                    continue
                if budget is not None:
                    if counted:
                        records.append(rec)
                elif window_start <= rec.end <= window_end:
                    records.append(rec)
        finally:
            conn.close()

    def open_window() -> None:
        state["start_probe"] = probe()
        state["start"] = time.perf_counter()

    def close_window() -> None:
        state["end_probe"] = probe()
        state["end"] = time.perf_counter()

    start_handle = loop.call_at(loop.time() + warmup_s, open_window)
    end_handle = None
    if duration_s is not None:
        end_handle = loop.call_at(loop.time() + warmup_s + duration_s, close_window)
    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        start_handle.cancel()
        if end_handle is not None:
            end_handle.cancel()
    if "start" not in state:
        open_window()
    if "end" not in state:
        close_window()
    window = float(state["end"]) - float(state["start"])  # type: ignore[arg-type]
    return LevelResult(concurrency, window, records, errors,
                       state["start_probe"], state["end_probe"])  # type: ignore[arg-type]
