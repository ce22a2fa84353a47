"""Prometheus metrics on ``--grpc-metrics-port`` for deployments that scrape the gRPC frontend there.

The HTTP API keeps serving ``/metrics`` too; this listener only answers ``GET /metrics`` (and 404
otherwise), with the same registry, so one scrape config works whichever port it points at. A plain
asyncio server: a second uvicorn in the same loop would fight the first over signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib

from dynamo.frontend.metrics import FrontendMetrics

_MAX_HEADER = 16 * 1024


async def start_metrics_server(metrics: FrontendMetrics, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if len(head) > _MAX_HEADER:
                return
            method, path, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
            if method == b"GET" and path.split(b"?", 1)[0] == b"/metrics":
                status, ctype, body = b"200 OK", b"text/plain; version=0.0.4; charset=utf-8", metrics.render()
            else:
                status, ctype, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEADER)
