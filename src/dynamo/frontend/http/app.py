"""The OpenAI-compatible HTTP service as a plain ASGI application.

A hand-rolled ASGI app rather than FastAPI routes: the frontend sits on every token of every request,
and dependency injection plus per-chunk model serialization would cost more CPU per request than
the whole rest of the pipeline. Requests are validated with the pydantic models in
``dynamo.llm.protocols.openai``; responses are plain dicts encoded with orjson.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from dynamo.frontend.http import errors as http_errors
from dynamo.frontend.http import writers
from dynamo.frontend.http.errors import HttpError
from dynamo.frontend.http.responses_writer import ResponsesStreamWriter, ResponsesUnaryWriter
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.pipeline import ModelEngine, merge_streams
from dynamo.llm.model_manager import ModelManager
from dynamo.llm.protocols import openai as oai
from dynamo.llm.protocols import responses as oai_responses
from dynamo.runtime import errors, tasks

logger = logging.getLogger("dynamo.frontend")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"connection", b"keep-alive")]
#: the ``nvext.annotations`` entry that asks where a request would be routed, without running it
QUERY_ONLY = "query_instance_id"


def body_limit_from_env() -> int:
    raw = os.environ.get("DYN_HTTP_BODY_LIMIT_MB", "45")
    try:
        return int(float(raw) * 1024 * 1024)
    except ValueError as exc:
        raise errors.ConfigError(f"environment variable DYN_HTTP_BODY_LIMIT_MB={raw!r} is not a number") from exc


class ClientDisconnected(Exception):
    pass


async def read_body(receive: Receive, limit: int, scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise HttpError(400, "invalid Content-Length header") from None
            if declared > limit:
                raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


async def send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status, "headers": (headers or JSON_HEADERS)
                + [(b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class FrontendApp:
    def __init__(self, manager: ModelManager, metrics: FrontendMetrics, *, busy: Any = None,
                 body_limit: int | None = None, admin_token: str | None = None,
                 direct_routing: bool = False) -> None:
        """``admin_token`` enables ``POST /busy_threshold`` for requests that present it as a bearer
        token; ``direct_routing`` lets clients pin a worker with ``x-worker-instance-id``."""
        self.manager = manager
        self.metrics = metrics
        self.busy = busy
        self.admin_token = admin_token or None
        self.direct_routing = direct_routing
        self.body_limit = body_limit if body_limit is not None else body_limit_from_env()
        self.shutting_down = False
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/responses"): self.responses,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.models,
            ("GET", "/health"): self.health,
            ("GET", "/live"): self.live,
            ("GET", "/metrics"): self.metrics_route,
            ("GET", "/openapi.json"): self.openapi,
            ("GET", "/busy_threshold"): self.busy_threshold,
            ("POST", "/busy_threshold"): self.busy_threshold,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for fn in self.on_startup:
                        await fn()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutting_down = True
                for fn in self.on_shutdown:
                    with contextlib.suppress(Exception):
                        await fn()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], scope["path"]))
        try:
            if route is None:
                allowed = sorted(method for method, path in self._routes if path == scope["path"])
                if allowed:
                    raise HttpError(405, f"method {scope['method']} not allowed on {scope['path']}",
                                    headers=[(b"allow", ", ".join(allowed).encode())])
                raise HttpError(404, f"no route for {scope['path']}")
            await route(scope, receive, send)
        except ClientDisconnected:
            self.metrics.disconnected.inc()
        except Exception as exc:
            err = http_errors.to_http(exc)
            if err.status >= 500 and not isinstance(exc, (HttpError, errors.DynamoError)):
                logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                await send_json(send, err.status, http_errors.json_bytes(err), JSON_HEADERS + err.headers)

    # -- OpenAI routes --------------------------------------------------------------------------

    def _engine(self, model: str, model_type: str) -> ModelEngine:
        ws = self.manager.worker_set(model, model_type)
        if ws.engine is None:
            raise errors.Unavailable(f"model '{model}' is still loading")
        return ws.engine

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive, self.body_limit, scope)
        if not self.manager.has_type("chat"):
            raise HttpError(404, "no chat model is registered yet")
        req = _parse(oai.ChatCompletionRequest, raw)
        engine = self._engine(req.model, "chat")
        rid = uuid.uuid4().hex
        pre = await engine.preprocess_chat(req, rid)
        n = req.n or 1
        writer = (writers.ChatStreamWriter if req.stream else writers.ChatUnaryWriter)(
            engine, req, rid, n, int(time.time()))
        await self._serve(scope, receive, send, engine, "chat_completions", req, [pre] * n, writer)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive, self.body_limit, scope)
        if not self.manager.has_type("completions"):
            raise HttpError(404, "no completions model is registered yet")
        req = _parse(oai.CompletionRequest, raw)
        engine = self._engine(req.model, "completions")
        rid = uuid.uuid4().hex
        pres = await engine.preprocess_completion(req, rid)
        n = req.n or 1
        choices = [p for p in pres for _ in range(n)]
        writer = (writers.CompletionStreamWriter if req.stream else writers.CompletionUnaryWriter)(
            engine, req, rid, len(choices), int(time.time()))
        await self._serve(scope, receive, send, engine, "completions", req, choices, writer)

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """OpenAI Responses API on the chat pipeline (served wherever a chat model is)."""
        raw = await read_body(receive, self.body_limit, scope)
        if not self.manager.has_type("chat"):
            raise HttpError(404, "no chat model is registered yet")
        rreq = _parse(oai_responses.ResponsesRequest, raw)
        req = rreq.to_chat()
        engine = self._engine(req.model, "chat")
        rid = uuid.uuid4().hex
        pre = await engine.preprocess_chat(req, rid)
        writer = (ResponsesStreamWriter if req.stream else ResponsesUnaryWriter)(
            engine, req, rreq, rid, int(time.time()))
        await self._serve(scope, receive, send, engine, "responses", req, [pre], writer)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, engine: ModelEngine, endpoint: str,
                     req: Any, pres: list[Any], writer: writers.ResponseWriter) -> None:
        """Run one request's choices through the engine and answer with ``writer``'s shape.

        Owns what every endpoint shares: the gauges and counters, the routing headers, the client
        disconnect (which stops the workers), and errors (an HTTP error before the first byte, an SSE
        error event after it)."""
        if pres and QUERY_ONLY in pres[0].request.annotations:
            await self._query_only(send, engine, req, pres[0], chat=endpoint != "completions")
            return
        m = self.metrics
        model = engine.model
        mm = m.for_model(model)
        stream_mode = writer.stream
        rid = pres[0].request.request_id if pres else ""
        prompt_tokens = sum(p.prompt_tokens for p in pres[:: (req.n or 1)])
        start = time.perf_counter()
        # Refusals come before the gauges go up: nothing below may raise until the ``try``.
        instance_id = _direct_instance(scope)
        prefill_id = _direct_instance(scope, b"x-prefill-instance-id")
        for header, given in (("x-worker-instance-id", instance_id), ("x-prefill-instance-id", prefill_id)):
            if given is not None and not self.direct_routing:
                raise HttpError(403, f"routing by {header} is disabled on this frontend (enable it with "
                                     "--router-mode direct or --enable-direct-routing-header)", header)
        mm.inflight.inc()
        mm.queued.inc()
        queued = True
        request_type = "stream" if stream_mode else "unary"
        status, error_type = "success", ""
        decisions: list[Any] = []
        on_decision = decisions.append if engine.supports_decisions else None
        served: list[int] = []  # the instance serving the first choice (the last one, after a migration)
        explained: list[dict[str, Any]] = []  # routing explanations the worker returned for the first choice
        streams = [engine.choice_stream(p, instance_id, on_decision, on_instance=served.append if i == 0 else None,
                                        prefill_instance_id=prefill_id, on_explain=explained.append if i == 0 else None)
                   for i, p in enumerate(pres)]
        merged = merge_streams(streams) if len(streams) > 1 else _indexed(streams[0])
        completion_tokens = [0] * len(pres)
        cached: list[int | None] = [None] * len(pres)
        # Both modes: a client that leaves a unary request must not keep a worker generating to max_tokens.
        watch = DisconnectWatch(receive, asyncio.current_task())
        started = False
        try:
            first = True
            last_t = start
            async for i, res in merged:
                if res.cached_tokens is not None:
                    cached[i] = res.cached_tokens
                now = time.perf_counter()
                if res.num_tokens:
                    if first:
                        mm.ttft.observe(now - start)
                        mm.queued.dec()
                        queued = False
                        first = False
                    else:
                        mm.itl.observe((now - last_t) / res.num_tokens)
                    last_t = now
                    completion_tokens[i] += res.num_tokens
                data = writer.step(i, res)
                if data is None:
                    continue
                if not started:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": SSE_HEADERS + _decision_headers(decisions, explained) + _served_header(served)})
                    started = True
                await send({"type": "http.response.body", "body": data, "more_body": True})
            total = sum(completion_tokens)
            # n choices of one prompt share its cache hit: count each prompt once.
            step = req.n or 1
            reported = [c for c in cached[::step] if c is not None]
            cached_total = sum(reported) if reported else None
            usage = oai.usage_dict(prompt_tokens, total, cached_total)
            if cached_total is not None:
                mm.cached_tokens.observe(cached_total)
            if stream_mode:
                if not started:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": SSE_HEADERS + _decision_headers(decisions, explained) + _served_header(served)})
                    started = True
                watch.disarm()
                await send({"type": "http.response.body", "body": writer.end(usage), "more_body": False})
            else:
                payload = writer.end(usage)
                if explained and isinstance(payload, dict):
                    payload["nvext"] = {"routing": _routing(decisions, explained)}
                watch.disarm()
                await send_json(send, 200, payload, JSON_HEADERS + _decision_headers(decisions, explained) + _served_header(served))
            mm.isl.observe(prompt_tokens)
            mm.osl.observe(total)
            mm.output_tokens.inc(total)
        except asyncio.CancelledError:
            status, error_type = "error", "cancelled"
            m.disconnected.inc()
            mm.cancellations.inc()
            # The client went away: swallow the cancellation; the finally block stops the workers.
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
        except Exception as exc:
            status, error_type = "error", type(exc).__name__
            if isinstance(exc, errors.ResourceExhausted):
                m.rejections.labels(model, endpoint).inc()
            if stream_mode and started:
                err = http_errors.to_http(exc)
                if err.status >= 500 and not isinstance(exc, errors.DynamoError):
                    logger.exception("request %s failed mid-stream", rid)
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": writer.error_event(http_errors.body(err)),
                                "more_body": False})
            else:
                raise
        finally:
            watch.close()
            try:
                await merged.aclose()
                for s in streams:
                    await s.aclose()
            finally:
                if queued:
                    mm.queued.dec()
                mm.inflight.dec()
                mm.duration.observe(time.perf_counter() - start)
                m.requests.labels(model, endpoint, request_type, status, error_type).inc()

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, self.body_limit, scope)
        if not self.manager.has_type("embedding"):
            raise HttpError(404, "no embedding model is registered yet")
        raise HttpError(501, "embeddings are not implemented by this frontend yet")

    # -- other routes ---------------------------------------------------------------------------

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = []
        for name in self.manager.model_names():
            created = min(ws.created for ws in self.manager.sets[name].values())
            data.append({"id": name, "object": "model", "created": created, "owned_by": "dynamo"})
        await send_json(send, 200, {"object": "list", "data": data})

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        instances = []
        endpoints = set()
        for ws in self.manager.all_sets():
            if ws.client is None:
                continue
            for inst in ws.client.instances():
                if inst.instance_id in ws.instances:
                    endpoints.add(inst.url)
                    instances.append({"namespace": inst.namespace, "component": inst.component,
                                      "endpoint": inst.endpoint, "instance_id": inst.instance_id,
                                      "transport": inst.transport, "model": ws.model})
        # A background loop that is down (waiting to restart, or given up) makes the frontend unhealthy;
        # one that failed recently but runs again is listed without changing the status.
        failing = tasks.failing()
        down = any(t["state"] != "running" for t in failing)
        await send_json(send, 200, {"status": "healthy" if instances and not down else "unhealthy",
                                    "endpoints": sorted(endpoints), "instances": instances,
                                    "failing_tasks": failing})

    async def live(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.shutting_down:
            await send_json(send, 503, {"status": "shutting_down", "message": "Service is shutting down"})
        else:
            await send_json(send, 200, {"status": "live", "message": "Service is live"})

    async def metrics_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.metrics.render(),
                        [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        from dynamo.frontend.http.openapi import openapi_document

        await send_json(send, 200, openapi_document())

    async def busy_threshold(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.busy is None:
            raise HttpError(501, "busy detection is not enabled on this frontend")
        if scope["method"] == "GET":
            await send_json(send, 200, {"thresholds": self.busy.all_thresholds()})
            return
        self._require_admin(scope)
        raw = await read_body(receive, self.body_limit, scope)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise HttpError(400, "body must be an object with a 'model' string", "model")
        await send_json(send, 200, self.busy.update(body))


    def _require_admin(self, scope: Scope) -> None:
        """Operator routes need the admin token (``GET /busy_threshold`` stays public: it shows the
        thresholds of models ``/v1/models`` already lists, and changes nothing)."""
        if self.admin_token is None:
            raise HttpError(403, f"{scope['method']} {scope['path']} is disabled on this frontend: start it with "
                                 "--admin-token (or DYN_ADMIN_TOKEN) and send 'Authorization: Bearer <token>'")
        presented = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                presented = value
        scheme, _, token = presented.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.admin_token.encode()):
            raise HttpError(401, "this route needs 'Authorization: Bearer <admin token>'")


    async def _query_only(self, send: Send, engine: ModelEngine, req: Any, pre: Any, *, chat: bool) -> None:
        """``nvext.annotations: ["query_instance_id"]``: say where the request would go (decode worker,
        and prefill worker when disaggregated), without running it or booking any load."""
        choice = engine.query_instances(pre.request)
        rid = pre.request.request_id or uuid.uuid4().hex
        body = {"id": oai.chat_completion_id(rid) if chat else oai.completion_id(rid),
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": engine.model, "choices": [], "nvext": {"worker_id": choice}}
        if req.stream:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(body) + b"\n\n" + writers.DONE,
                        "more_body": False})
        else:
            await send_json(send, 200, body)


def _served_header(served: list[int]) -> list[tuple[bytes, bytes]]:
    """``x-dynamo-worker-instance-id``: the worker instance that served the (first) choice."""
    if not served:
        return []
    return [(b"x-dynamo-worker-instance-id", str(served[-1]).encode())]


def _routing(decisions: list[Any], explained: list[dict[str, Any]]) -> dict[str, Any]:
    """The first choice's routing: the KV router's decision (worker, overlap, cost terms) merged with
    what the worker explained (the global router's pools; the latest one, after a migration)."""
    out: dict[str, Any] = decisions[0].to_dict() if decisions else {}
    if explained:
        out.update(explained[-1])
    return out


def _decision_headers(decisions: list[Any], explained: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """``x-dynamo-routing``: see :func:`_routing`."""
    if not decisions and not explained:
        return []
    return [(b"x-dynamo-routing", orjson.dumps(_routing(decisions, explained)))]


async def _indexed(stream: Any) -> Any:
    async for item in stream:
        yield 0, item


def _direct_instance(scope: Scope, header: bytes = b"x-worker-instance-id") -> int | None:
    for name, value in scope.get("headers", ()):
        if name == header:
            text = value.decode("latin-1").strip()
            try:
                return int(text, 16) if text.lower().startswith("0x") or not text.isdigit() else int(text)
            except ValueError:
                raise HttpError(400, f"{header.decode()} {text!r} is not an instance id", header.decode()) from None
    return None


class DisconnectWatch:
    """Cancels the serving task when the client disconnects, until the response is being completed.

    ``disarm()`` before sending the last bytes: once the response is complete the server reports
    ``http.disconnect`` on the next ``receive()``, which must not cancel the task's own clean-up.
    """

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        self._task = task
        self._armed = True
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self._armed and self._task is not None:
                    self._task.cancel()
                return

    def disarm(self) -> None:
        self._armed = False

    def close(self) -> None:
        self._armed = False
        self._watcher.cancel()


def _parse(model: type[Any], raw: bytes) -> Any:
    if not raw:
        raise HttpError(400, "request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        # Distinguish malformed JSON from a well-formed body with bad fields.
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            raise HttpError(400, f"invalid JSON body: {exc.errors()[0].get('msg')}") from None
        raise
