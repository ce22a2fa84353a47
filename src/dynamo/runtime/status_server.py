"""System status server of a worker process: probes and scraping (reference §1.8).

Enabled when ``DYN_SYSTEM_PORT`` is set to a port (0 = any free port; unset or -1 = off), listening on
``DYN_SYSTEM_HOST`` (default ``0.0.0.0``). Routes: ``/health`` (``DYN_SYSTEM_HEALTH_PATH``; 200 when
ready, else 503, body from :class:`~dynamo.runtime.health.SystemHealth`), ``/live``
(``DYN_SYSTEM_LIVE_PATH``; 200 while the process runs, draining included, so a probe never kills a
worker that is finishing its streams), ``/metrics`` (Prometheus text: the process's
``dynamo_component_*`` metrics and any registry the component added).

A deliberately tiny HTTP/1.1 server (GET only, one request per connection): probes and scrapes are a
few requests a second, and it keeps a web framework out of every worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dynamo.runtime import errors

if TYPE_CHECKING:
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT_SECS = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def port_from_env() -> int | None:
    raw = os.environ.get("DYN_SYSTEM_PORT")
    if raw is None or raw.strip() == "":
        return None
    try:
        port = int(raw)
    except ValueError as exc:
        raise errors.ConfigError(f"DYN_SYSTEM_PORT={raw!r} is not a port number") from exc
    if port < 0:
        return None
    if port > 65535:
        raise errors.ConfigError(f"DYN_SYSTEM_PORT={raw!r} is not a port number")
    return port


class StatusServer:
    def __init__(self, runtime: DistributedRuntime, host: str, port: int) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self.health_path = os.environ.get("DYN_SYSTEM_HEALTH_PATH") or "/health"
        self.live_path = os.environ.get("DYN_SYSTEM_LIVE_PATH") or "/live"
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    async def from_env(cls, runtime: DistributedRuntime) -> StatusServer | None:
        port = port_from_env()
        if port is None:
            return None
        server = cls(runtime, os.environ.get("DYN_SYSTEM_HOST") or "0.0.0.0", port)
        await server.start()
        return server

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise errors.ConfigError(
                f"system status server cannot listen on {self.host}:{self.port} (DYN_SYSTEM_HOST/"
                f"DYN_SYSTEM_PORT): {exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("system status server on http://%s:%d (%s, %s, /metrics)",
                    self.host, self.port, self.health_path, self.live_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request; pure apart from reading the runtime state."""
        path = path.split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"only GET is served here\n"
        if path == self.health_path:
            report = self.runtime.health.report()
            return (200 if report["status"] == "ready" else 503), "application/json", orjson.dumps(report)
        if path == self.live_path:
            return 200, "application/json", orjson.dumps({"status": "live", "message": "Service is live"})
        if path == "/metrics":
            body = b"".join(generate_latest(reg) for reg in self.runtime.metrics_registries())
            return 200, CONTENT_TYPE_LATEST, body
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                    ConnectionError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain", b"malformed request line\n"
            else:
                status, ctype, body = self.respond(parts[0], parts[1])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("latin-1") + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
