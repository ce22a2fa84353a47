"""dynamo-run as a user runs it: real processes, the official openai client, a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from dynamo.llm.local_router import LocalRouter
from dynamo.llm.model_registration import build_card
from dynamo.llm.preprocessor.request import OpenAIPreprocessor
from dynamo.llm.protocols import openai as oai
from dynamo.llm.protocols.engine import PreprocessedRequest, StopConditions
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.engine import MockerEngine
from dynamo.runtime.context import RequestContext
from tests.support.deploy import QWEN, new_deployment
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
FAST = json.dumps({"speedup_ratio": 100})
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def run_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_STORE_KV": "file", "HF_HUB_OFFLINE": "1",
           "DYN_REQUEST_PLANE": "tcp", "DYN_EVENT_PLANE": "zmq"}
    for name in ("DYN_NAMESPACE", "DYN_LOG", "DYN_HTTP_PORT", "DYN_MIGRATION_LIMIT", "DYN_ROUTER_MODE"):
        env.pop(name, None)
    return env


def dynamo_run(*args: str, env: dict[str, str], stdin: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamo.run", *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=timeout)


@contextlib.contextmanager
def server(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dynamo.run", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def models_at(url: str) -> list[str]:
    try:
        return [m["id"] for m in httpx.get(url + "/v1/models", timeout=2).json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def wait_models(url: str, expected: set[str], proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dynamo-run exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        return set(models_at(url)) == expected

    wait_for(ready, timeout, 0.1, what=f"models {expected} at {url}")


# -- in=http out=mocker: one process, the whole deployment ---------------------------------------


@pytest.fixture(scope="module")
def http_mocker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("run-http")
    template = tmp / "template.json"
    template.write_text(json.dumps({"max_tokens": 3, "temperature": 0.7}))
    port = free_port()
    log = tmp / "run.log"
    with server("in=http", "out=mocker", str(QWEN), "--http-host", "127.0.0.1", "--http-port", str(port),
                "--extra-engine-args", FAST, "--context-length", "4096", "--request-template", str(template),
                env=run_env(tmp), log=log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_models(url, {MODEL}, proc, log)
        yield url


@pytest.fixture(scope="module")
def client(http_mocker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=http_mocker + "/v1", api_key="unused", max_retries=0)


def test_http_chat_non_streaming(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    # The HF template render of this conversation is 26 tokens (shared/data/models/README.md).
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (26, 12)


def test_http_chat_streaming(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=9, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (26, 9)


def test_http_completions_both_ways(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=7)
    assert resp.usage.completion_tokens == 7 and resp.choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].text for c in chunks)


def test_http_request_template_fills_missing_fields(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert resp.usage.completion_tokens == 3  # max_tokens from --request-template
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other-model", messages=MESSAGES)


def test_http_health_lists_the_in_process_engine(http_mocker: str) -> None:
    body = httpx.get(http_mocker + "/health", timeout=5).json()
    assert body["status"] == "healthy"
    assert [i["model"] for i in body["instances"]] == [MODEL]


# -- in=batch ------------------------------------------------------------------------------------


def test_batch_fifty_lines_with_exact_token_counts(tmp_path: Path) -> None:
    texts = [f"Question {i}: what is {i} times {i + 1}?" for i in range(50)]
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + "\n")
    template = tmp_path / "tpl.json"
    template.write_text(json.dumps({"max_completion_tokens": 6}))
    res = dynamo_run(f"in=batch:{batch}", "out=mocker", str(QWEN), "--extra-engine-args", FAST,
                     "--request-template", str(template), env=run_env(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in (tmp_path / "output.jsonl").read_text().splitlines()]
    assert len(lines) == 50
    pre = OpenAIPreprocessor.from_card(build_card(str(QWEN)))
    for text, rec in zip(texts, lines, strict=True):
        req = oai.ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": text}])
        assert rec["text"] == text
        assert rec["tokens_in"] == pre.preprocess_chat(req).prompt_tokens
        assert rec["tokens_out"] == 6
        assert rec["response"] and rec["elapsed_ms"] >= 0
    assert "Ran 50 requests" in res.stdout and "tokens out: 300" in res.stdout
    assert "50/50" in res.stderr  # the progress bar's last state


def test_batch_with_echo_returns_the_prompt(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"text": "echo me back"}) + "\n")
    res = dynamo_run(f"in=batch:{batch}", "out=echo", str(QWEN), env={**run_env(tmp_path),
                                                                       "DYN_TOKEN_ECHO_DELAY_MS": "0"})
    assert res.returncode == 0, res.stderr
    (rec,) = [json.loads(line) for line in (tmp_path / "output.jsonl").read_text().splitlines()]
    assert "echo me back" in rec["response"] and rec["tokens_out"] == rec["tokens_in"]


def test_stdin_answers_one_prompt(tmp_path: Path) -> None:
    res = dynamo_run("in=stdin", "out=echo", str(QWEN), stdin="What is Dynamo?\n",
                     env={**run_env(tmp_path), "DYN_TOKEN_ECHO_DELAY_MS": "0"})
    assert res.returncode == 0, res.stderr
    assert "What is Dynamo?" in res.stdout


# -- in=text through a pseudo-terminal -------------------------------------------------------------


class Terminal:
    """dynamo-run on a pty that is its controlling terminal, so ^C and ^D mean what they do for a user."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        import fcntl
        import pty
        import termios

        self.master, slave = pty.openpty()

        def take_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "dynamo.run", "in=text", *args], env=env,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=take_terminal)
        os.close(slave)
        self.buf = b""

    def read_until(self, marker: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} on the terminal; got {self.buf[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {marker!r}; got {self.buf[-2000:]!r}")
                self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def read_some(self, nbytes: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.buf) < nbytes:
            assert time.monotonic() < deadline, f"terminal output stalled at {self.buf!r}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                self.buf += os.read(self.master, 65536)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


PROMPT = b"? User: "


def test_text_chat_answers_and_ctrl_d_exits_zero(tmp_path: Path) -> None:
    term = Terminal("out=echo", str(QWEN), env={**run_env(tmp_path), "DYN_TOKEN_ECHO_DELAY_MS": "0"})
    try:
        term.read_until(PROMPT)
        term.type(b"what is the answer\r")
        answer = term.read_until(PROMPT)
        # The echo engine streams the rendered chat prompt back: the question appears in the answer.
        assert answer.count(b"what is the answer") >= 2, answer
        term.type(b"and the second question\r")
        answer = term.read_until(PROMPT)
        assert b"what is the answer" in answer.split(b"\r\n", 1)[1], "the conversation history was dropped"
        term.type(b"\x04")
        assert term.proc.wait(10) == 0
    finally:
        term.close()


def test_text_ctrl_c_stops_the_reply_not_the_chat(tmp_path: Path) -> None:
    template = tmp_path / "long.json"
    template.write_text(json.dumps({"max_completion_tokens": 30000}))
    term = Terminal("out=mocker", str(QWEN), "--request-template", str(template), env=run_env(tmp_path))
    try:
        term.read_until(PROMPT)
        term.type(b"tell me a long story\r")
        term.read_until(b"tell me a long story\r\n")
        term.read_some(40)  # the reply is streaming (30000 tokens at real-time speed: minutes)
        term.type(b"\x03")
        term.read_until(b"[reply stopped]")
        term.read_until(PROMPT, timeout=5)
        assert term.proc.poll() is None
        term.type(b"\x04")
        assert term.proc.wait(10) == 0
    finally:
        term.close()


# -- with other processes: a worker for the frontend, a frontend for workers ---------------------------


def test_in_dyn_worker_serves_a_separate_frontend() -> None:
    dep = new_deployment()
    try:
        dep.spawn("worker", "-m", "dynamo.run", "in=dyn://dynamo.backend.generate", "out=mocker", str(QWEN),
                  "--extra-engine-args", FAST)
        dep.start_frontend()
        dep.wait_models({MODEL})
        client = openai.OpenAI(base_url=dep.url + "/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (26, 5)
        chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    finally:
        dep.close()


def test_out_dyn_and_static_endpoint_find_a_separate_mocker(tmp_path: Path) -> None:
    dep = new_deployment()
    try:
        dep.mocker("--speedup-ratio", "100")
        found = free_port()
        static = free_port()
        dep.spawn("run-dyn", "-m", "dynamo.run", "in=http", "out=dyn", "--http-host", "127.0.0.1",
                  "--http-port", str(found), "--router-mode", "kv")
        dep.spawn("run-static", "-m", "dynamo.run", "in=http", "out=dyn://dynamo.backend.generate",
                  "--model-name", "static-qwen", "--model-path", str(QWEN), "--http-host", "127.0.0.1",
                  "--http-port", str(static))
        wait_for(lambda: models_at(f"http://127.0.0.1:{found}") == [MODEL], 30, 0.1, what="out=dyn model")
        wait_for(lambda: models_at(f"http://127.0.0.1:{static}") == ["static-qwen"], 30, 0.1, what="static model")
        for port, name in ((found, MODEL), (static, "static-qwen")):
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
            resp = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=4)
            assert resp.model == name and resp.usage.completion_tokens == 4
        # out=dyn with --router-mode kv routes with the KV router, which explains its decision.
        r = httpx.post(f"http://127.0.0.1:{found}/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": "hello", "max_tokens": 2})
        assert r.status_code == 200 and "worker_id" in r.headers["x-dynamo-routing"]
        # text/stdin/batch reach discovered models too
        res = dynamo_run("in=stdin", "out=dyn", stdin="hello\n", env=dep.env)
        assert res.returncode == 0 and res.stdout.strip(), res.stderr
    finally:
        dep.close()


def test_in_grpc_serves_kserve_with_the_in_process_engine(tmp_path: Path) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) not installed")
    import numpy as np

    port, metrics_port = free_port(), free_port()
    log = tmp_path / "run.log"
    with server("in=grpc", "out=mocker", str(QWEN), "--extra-engine-args", FAST, "--http-host", "127.0.0.1",
                "--grpc-port", str(port), "--grpc-metrics-port", str(metrics_port), env=run_env(tmp_path),
                log=log) as proc:
        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return client.is_model_ready(MODEL)
            except Exception:
                return False

        wait_for(ready, 30, what="the model to be ready over gRPC")
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"Hello"], dtype=object))
        result = client.infer(MODEL, [text], parameters={"max_tokens": 5})
        assert result.as_numpy("text_output")[0] and result.as_numpy("finish_reason")[0] == b"length"
        assert "kserve_infer" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()


# -- wrong input: one clear line, exit code 2 -------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["in=carrier-pigeon", "out=echo", str(QWEN)], "unknown input in=carrier-pigeon"),
    (["in=text", "out=gpu", str(QWEN)], "unknown engine out=gpu"),
    (["out=echo", str(QWEN), "--extra-engine-args", FAST], "--extra-engine-args is only accepted with out=mocker"),
    (["in=http", "out=mocker"], "out=mocker needs a model"),
    (["out=mocker", str(QWEN), "--migration-limit", "1024"], "--migration-limit must be in [0, 1023]"),
    (["in=batch:/nonexistent/prompts.jsonl", "out=echo", str(QWEN)], "cannot read /nonexistent/prompts.jsonl"),
    (["in=http", "out=dyn://dynamo.backend.generate"], "needs --model-name and --model-path"),
    (["in=dyn://dynamo.backend", "out=mocker", str(QWEN)], "expected dyn://NAMESPACE.COMPONENT.ENDPOINT"),
    (["in=dyn://dynamo.backend.generate", "out=dyn"], "use out=mocker or out=echo"),
    (["out=mocker", "/no/such/model"], "neither a local directory nor a Hugging Face repo id"),
    (["in=grpc", "out=echo", str(QWEN), "--grpc-port", "70000"], "--grpc-port must be in [0, 65535]"),
])
def test_wrong_input_exits_2_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = dynamo_run(*args, env=run_env(tmp_path), stdin="")
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_malformed_batch_line_and_bad_template_exit_2(tmp_path: Path) -> None:
    batch = tmp_path / "bad.jsonl"
    batch.write_text('{"text": "fine"}\n{"prompt": "no text key"}\n')
    res = dynamo_run(f"in=batch:{batch}", "out=echo", str(QWEN), env=run_env(tmp_path))
    assert res.returncode == 2 and "line 2" in res.stderr
    template = tmp_path / "tpl.json"
    template.write_text(json.dumps({"temperature": 9}))
    res = dynamo_run("in=stdin", "out=echo", str(QWEN), "--request-template", str(template),
                     env=run_env(tmp_path), stdin="hi")
    assert res.returncode == 2 and "temperature" in res.stderr


def test_help_explains_the_syntax_with_examples(tmp_path: Path) -> None:
    res = dynamo_run("--help", env=run_env(tmp_path))
    assert res.returncode == 0
    for needle in ("in=INPUT", "out=ENGINE", "batch:FILE.jsonl", "dyn://", "examples:",
                   "dynamo-run in=http out=mocker", "--request-template", "--migration-limit"):
        assert needle in res.stdout


# -- the local router: an abandoned stream stops the engine's request ---------------------------------


async def test_local_router_closing_a_stream_frees_the_engine_request() -> None:
    engine = MockerEngine(MockEngineArgs.from_dict({"block_size": 16, "speedup_ratio": 1.0}), 7)
    engine.start()
    try:
        router = LocalRouter({7: engine})
        req = PreprocessedRequest(model=MODEL, token_ids=list(range(100, 164)),
                                  stop_conditions=StopConditions(max_tokens=100_000))
        iid, stream = await router.generate(req)
        assert iid == 7
        got = 0
        async for out in stream:
            got += len(out.token_ids)
            if got >= 3:
                break
        assert engine.active_requests == 1 and router.inflight == {7: 1}
        await stream.aclose()  # type: ignore[attr-defined]
        assert engine.active_requests == 0 and router.inflight == {}
        # A finished stream also leaves nothing behind.
        _, stream = await router.generate(PreprocessedRequest(
            model=MODEL, token_ids=[1, 2, 3], stop_conditions=StopConditions(max_tokens=2)))
        assert sum([len(o.token_ids) async for o in stream]) == 2
        assert engine.active_requests == 0 and router.inflight == {}
    finally:
        await engine.stop()


def test_local_router_honours_busy_and_direct_instances() -> None:
    import asyncio

    from dynamo.runtime import errors

    class Never:
        async def generate(self, request: object, ctx: RequestContext) -> AsyncIterator[object]:
            yield request

    router = LocalRouter({1: Never(), 2: Never()})
    assert {router.select() for _ in range(4)} == {1, 2}
    router.busy = {1}
    assert {router.select() for _ in range(4)} == {2}
    router.busy = {1, 2}
    with pytest.raises(errors.ResourceExhausted):
        router.select()
    with pytest.raises(errors.NotFound):
        asyncio.run(router.generate(object(), instance_id=3))
