"""``in=`` inputs of dynamo-run: where requests come from.

- ``in=http``: the OpenAI-compatible server (the frontend's own ASGI app and uvicorn settings).
- ``in=text``: interactive chat in the terminal, keeping the conversation; Ctrl-C stops a reply,
  Ctrl-D (end of input) exits.
- ``in=stdin``: one prompt read from standard input, one answer on standard output.
- ``in=batch:FILE.jsonl``: every ``{"text": ...}`` line as a chat request; results go to
  ``output.jsonl`` next to the file.
- ``in=dyn://ns.comp.ep``: no requests of our own; the engine is served as a worker on that endpoint.

Text, stdin and batch drive the ``ModelEngine`` pipeline directly, without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import orjson
from pydantic import ValidationError

from dynamo.frontend.pipeline import ModelEngine
from dynamo.llm.protocols import openai as oai
from dynamo.run.engines import Engines, frontend_config
from dynamo.runtime import errors

if TYPE_CHECKING:
    from dynamo.run.__main__ import RunConfig

logger = logging.getLogger("dynamo.run")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: completion budget of text/stdin/batch requests when the request template sets none: engines such
#: as the mocker never stop on their own, and a chat answer of the whole context length is no answer
DEFAULT_MAX_TOKENS = 256
#: batch requests in flight at once
BATCH_CONCURRENCY = 64
TEXT_PROMPT = "? User: "
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions")


# -- request template --------------------------------------------------------------------------------


def load_request_template(path: str) -> dict[str, Any]:
    """``--request-template FILE``: a JSON object of default request fields."""
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"--request-template {path}: {exc.strerror or exc}") from None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.ConfigError(f"--request-template {path}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise errors.ConfigError(f"--request-template {path}: expected a JSON object of request fields")
    return obj


def request_defaults(config: RunConfig) -> dict[str, Any]:
    """Fields of every text/stdin/batch request: built-in defaults under the request template."""
    template = dict(config.request_template or {})
    defaults: dict[str, Any] = {}
    if config.out_kind == "echo":
        # The echo engine replays the chat prompt, which holds end-of-turn tokens: do not stop on them.
        defaults["ignore_eos"] = True
    elif "max_tokens" not in template and "max_completion_tokens" not in template:
        defaults["max_completion_tokens"] = DEFAULT_MAX_TOKENS
    return {**defaults, **template}


def chat_request(model: str, messages: list[dict[str, Any]], fields: dict[str, Any]) -> oai.ChatCompletionRequest:
    body = {**fields, "model": model, "messages": messages, "stream": True}
    body.pop("stream_options", None)
    try:
        return oai.ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise errors.InvalidArgument(f"invalid request field {where}: {first.get('msg')}") from None


def check_request_template(config: RunConfig) -> None:
    """Fail at start-up, not on the first prompt, when the template's fields are invalid."""
    if config.request_template is None:
        return
    try:
        chat_request("check", [{"role": "user", "content": "check"}], request_defaults(config))
    except errors.InvalidArgument as exc:
        raise errors.ConfigError(f"--request-template {config.request_template_path}: {exc}") from None


class RequestTemplateMiddleware:
    """Fills fields an HTTP request leaves out from the request template (the request's own win)."""

    def __init__(self, app: Any, template: dict[str, Any]) -> None:
        self.app = app
        # Whether to stream is the client's choice: its library parses the answer accordingly.
        self.template = {k: v for k, v in template.items() if k not in ("stream", "stream_options")}
        self.body_limit = getattr(app, "body_limit", 45 * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in OPENAI_PATHS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.body_limit:
            await self.app(scope, receive, send)  # the app answers 413 without reading it
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(body)
            if isinstance(obj, dict):
                body = orjson.dumps({**self.template, **obj})
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


# -- in=http ----------------------------------------------------------------------------------------


@dataclass
class _HttpService:
    """What ``serve_http`` reads from a frontend: the ASGI app and the model names to announce."""

    app: Any
    manager: Any


async def run_http(config: RunConfig, engines: Engines) -> None:
    from dynamo.frontend.service import Frontend, serve_http

    app: Any = engines.app
    if config.request_template:
        app = RequestTemplateMiddleware(app, config.request_template)
    await serve_http(frontend_config(config), cast(Frontend, _HttpService(app, engines.manager)))


async def run_grpc(config: RunConfig, engines: Engines) -> None:
    """in=grpc: the KServe v2 gRPC server (and its metrics port) until SIGINT/SIGTERM."""
    from dynamo.frontend.grpc.metrics_server import start_metrics_server
    from dynamo.frontend.grpc.service import start_grpc_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server, port = await start_grpc_server(engines.manager, engines.metrics, config.http_host, config.grpc_port)
    metrics_server = None
    try:
        if config.grpc_metrics_port:
            metrics_server = await start_metrics_server(engines.metrics, config.http_host, config.grpc_metrics_port)
        logger.info("KServe gRPC listening on %s:%d (models: %s)", config.http_host, port,
                       ", ".join(engines.manager.model_names()) or "none yet; waiting for workers")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            metrics_server.close()
        await server.stop(float(os.environ.get("DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", "5")))


# -- one chat turn ---------------------------------------------------------------------------------


@dataclass
class Reply:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str | None


async def chat_turn(engine: ModelEngine, req: oai.ChatCompletionRequest,
                    on_text: Callable[[str], None] | None = None) -> Reply:
    pre = await engine.preprocess_chat(req, uuid.uuid4().hex)
    parts: list[str] = []
    tokens_out = 0
    finish: str | None = None
    stream = engine.choice_stream(pre)
    try:
        async for res in stream:
            tokens_out += res.num_tokens
            if res.text:
                parts.append(res.text)
                if on_text is not None:
                    on_text(res.text)
            if res.finish_reason is not None:
                finish = res.finish_reason
    finally:
        await stream.aclose()
    return Reply("".join(parts), pre.prompt_tokens, tokens_out, finish)


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- in=text ----------------------------------------------------------------------------------------


class LineReader:
    """``input()`` on a daemon thread, one line per request.

    A daemon thread (not the loop's executor) because a thread blocked in ``input()`` cannot be
    interrupted, and executor threads are joined at exit: leaving the chat must not wait for Enter.
    With readline loaded, ``input()`` gives line editing and history on a terminal.
    """

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self._requests: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[str | None]]] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="dynamo-run-input", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            loop, fut = self._requests.get()
            line: str | None
            try:
                line = input(self.prompt)
            except EOFError:
                line = None
            except Exception:  # a closed or broken stdin must end the chat, not hang it
                line = None
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, line)

    async def readline(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str | None] = loop.create_future()
        self._requests.put((loop, fut))
        return await fut


def _resolve(fut: asyncio.Future[str | None], line: str | None) -> None:
    if not fut.done():
        fut.set_result(line)


@contextlib.contextmanager
def _terminal_restored(stream: TextIO) -> Any:
    """Put the terminal back as found: readline may still own it when we leave mid-prompt."""
    saved = None
    fd = -1
    try:
        if stream.isatty():
            import termios

            fd = stream.fileno()
            saved = termios.tcgetattr(fd)
    except (OSError, ValueError, ImportError):
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            import termios

            with contextlib.suppress(OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_text(config: RunConfig, engines: Engines) -> int:
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    model = await engines.wait_for_model(config.served_model_hint)
    fields = request_defaults(config)
    out = sys.stdout
    if sys.stdin.isatty():
        print(f"Chatting with {model}. Ctrl-C stops a reply, Ctrl-D exits.", file=out, flush=True)
    reader = LineReader(TEXT_PROMPT)
    history: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    current: dict[str, asyncio.Task[Any] | None] = {"reply": None}
    main_task = asyncio.current_task()
    interrupted = {"at_prompt": False}

    def on_sigint() -> None:
        reply = current["reply"]
        if reply is not None and not reply.done():
            reply.cancel()
        elif main_task is not None:
            interrupted["at_prompt"] = True
            main_task.cancel()

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        with _terminal_restored(sys.stdin):
            while True:
                try:
                    line = await reader.readline()
                except asyncio.CancelledError:
                    if interrupted["at_prompt"]:
                        write("\n")
                        return 130
                    raise
                if line is None:
                    write("\n")
                    return 0
                if not line.strip():
                    continue
                history.append({"role": "user", "content": line})
                try:
                    req = chat_request(model, history, fields)
                    engine = engines.engine(model)
                except errors.DynamoError as exc:
                    history.pop()
                    print(f"error: {_error_text(exc)}", file=sys.stderr, flush=True)
                    continue
                task = loop.create_task(chat_turn(engine, req, write))
                current["reply"] = task
                await asyncio.wait({task})
                current["reply"] = None
                if task.cancelled():
                    write("\n[reply stopped]\n")
                    # Keep the question answered with nothing, so the conversation stays alternating.
                    history.append({"role": "assistant", "content": ""})
                    continue
                exc = task.exception()
                if exc is not None:
                    history.pop()
                    write("\n")
                    print(f"error: {_error_text(exc)}", file=sys.stderr, flush=True)
                    continue
                reply: Reply = task.result()
                write("\n")
                history.append({"role": "assistant", "content": reply.text})
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# -- in=stdin ---------------------------------------------------------------------------------------


async def run_stdin(config: RunConfig, engines: Engines) -> int:
    prompt = (await asyncio.to_thread(sys.stdin.read)).strip()
    if not prompt:
        raise errors.ConfigError("in=stdin: standard input held no prompt")
    model = await engines.wait_for_model(config.served_model_hint)
    req = chat_request(model, [{"role": "user", "content": prompt}], request_defaults(config))

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        await chat_turn(engines.engine(model), req, write)
    except errors.DynamoError as exc:
        print(f"\nerror: {_error_text(exc)}", file=sys.stderr, flush=True)
        return 1
    write("\n")
    return 0


# -- in=batch ---------------------------------------------------------------------------------------


def read_batch_file(path: str) -> list[str]:
    """The ``text`` of every non-blank line; ConfigError naming the line on anything else."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.ConfigError(f"in=batch: cannot read {path}: {reason}") from None
    prompts: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise errors.ConfigError(f"in=batch: {path} line {n}: invalid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise errors.ConfigError(f'in=batch: {path} line {n}: expected an object like {{"text": "..."}}')
        prompts.append(obj["text"])
    if not prompts:
        raise errors.ConfigError(f"in=batch: {path} holds no requests")
    return prompts


def batch_output_path(batch_file: str) -> Path:
    """``output.jsonl`` in the batch file's folder."""
    return Path(batch_file).resolve().parent / "output.jsonl"


class ProgressBar:
    """A one-line bar on stderr, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        filled = self.WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} requests, {now - self.start:.1f}s")
        self.stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        self.stream.write("\n")
        self.stream.flush()


async def run_batch(config: RunConfig, engines: Engines) -> int:
    assert config.batch_file is not None
    prompts = read_batch_file(config.batch_file)
    out_path = batch_output_path(config.batch_file)
    model = await engines.wait_for_model(config.served_model_hint)
    fields = request_defaults(config)
    results: dict[int, dict[str, Any]] = {}
    sem = asyncio.Semaphore(BATCH_CONCURRENCY)
    bar = ProgressBar(len(prompts))
    failures = 0
    done = 0
    started = time.perf_counter()

    async def one(i: int, text: str) -> None:
        nonlocal failures, done
        async with sem:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"text": text}
            try:
                reply = await chat_turn(engines.engine(model),
                                        chat_request(model, [{"role": "user", "content": text}], fields))
            except errors.DynamoError as exc:
                failures += 1
                record.update(response="", tokens_in=0, tokens_out=0, error=_error_text(exc))
            else:
                record.update(response=reply.text, tokens_in=reply.tokens_in, tokens_out=reply.tokens_out)
            record["elapsed_ms"] = round((time.perf_counter() - t0) * 1000)
            results[i] = record
            done += 1
            bar.update(done)

    bar.update(0, force=True)
    with out_path.open("wb") as f:
        written = 0
        pending = {asyncio.get_running_loop().create_task(one(i, t)) for i, t in enumerate(prompts)}
        try:
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    t.result()
                # Lines go out in input order as soon as every earlier one is done.
                while written in results:
                    f.write(orjson.dumps(results.pop(written)) + b"\n")
                    written += 1
                f.flush()
        finally:
            for t in pending:
                t.cancel()
    bar.finish(done)
    wall = time.perf_counter() - started
    ok = len(prompts) - failures
    summary = _batch_summary(out_path, len(prompts), ok, wall)
    print(summary, flush=True)
    return 0 if failures == 0 else 1


def _batch_summary(out_path: Path, total: int, ok: int, wall: float) -> str:
    tokens_in = tokens_out = 0
    elapsed: list[int] = []
    with out_path.open("rb") as f:
        for line in f:
            rec = orjson.loads(line)
            tokens_in += rec["tokens_in"]
            tokens_out += rec["tokens_out"]
            elapsed.append(rec["elapsed_ms"])
    elapsed.sort()
    mean = sum(elapsed) / len(elapsed) if elapsed else 0.0
    p50 = elapsed[len(elapsed) // 2] if elapsed else 0
    lines = [
        f"Ran {total} requests in {wall:.2f}s ({ok} ok, {total - ok} failed).",
        f"Tokens in: {tokens_in}, tokens out: {tokens_out} ({tokens_out / wall if wall > 0 else 0:.1f} tokens/s out).",
        f"Request time: mean {mean:.0f} ms, median {p50} ms.",
        f"Results written to {out_path}",
    ]
    return "\n".join(lines)


# -- in=dyn://ns.comp.ep ------------------------------------------------------------------------------


async def serve_worker(config: RunConfig) -> int:
    """Serve the ``out=`` engine on the ``in=`` endpoint and register its model, until SIGTERM/SIGINT."""
    from dynamo.llm.model_registration import register_llm
    from dynamo.llm.protocols.engine import PreprocessedRequest
    from dynamo.run.engines import echo_delay_s, mocker_args, mocker_card, model_card
    from dynamo.runtime import DistributedRuntime
    from dynamo.runtime.shutdown import install_signal_handlers

    assert config.in_endpoint is not None
    stop: Callable[[], Awaitable[None]] | None = None
    if config.out_kind == "mocker":
        args = mocker_args(config)
        card = mocker_card(config, args)
    else:
        card = model_card(config)
    runtime = await DistributedRuntime.create(config.store_kv, config.request_plane, config.event_plane)
    install_signal_handlers(runtime)
    try:
        if config.out_kind == "mocker":
            from dynamo.mocker.__main__ import MockerConfig, start_worker

            mc = MockerConfig()
            mc.endpoint = config.in_endpoint
            mc.namespace = config.namespace
            engine = await start_worker(runtime, mc, args, runtime.instance_id, card)
            stop = engine.stop
        else:
            from dynamo.echo.__main__ import EchoEngine

            endpoint = runtime.endpoint(config.in_endpoint)
            echo = EchoEngine(echo_delay_s())
            await endpoint.start_serving(echo.generate, request_type=PreprocessedRequest)
            await register_llm(endpoint, card)
        logger.info("%s worker serving model %r on %s", config.out_kind, card.name, config.in_endpoint)
        await runtime.wait_for_shutdown()
    finally:
        if not runtime.is_shutting_down():
            await runtime.shutdown(grace_period=0)
        if stop is not None:
            await stop()
    return 0

