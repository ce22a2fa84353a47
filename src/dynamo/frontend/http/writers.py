"""Response writers: one request's stream of per-choice steps -> the bytes of its HTTP response.

``FrontendApp._serve`` owns everything the endpoints share (metrics, disconnects, errors, when the
200 is committed); a writer owns only the response shape. A streaming writer returns SSE bytes per
step (None: nothing to send yet) and the stream's tail at the end; a unary writer collects the steps
and returns the JSON body at the end. Writers are pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from dynamo.frontend import reasoning, tool_call_output
from dynamo.frontend.logprobs_output import CompletionLogprobs, TokenTexts, chat_entries, chat_logprobs
from dynamo.llm.postprocessor.stop import StepResult
from dynamo.llm.protocols import openai as oai

DONE = b"data: [DONE]\n\n"


def sse_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class ResponseWriter(Protocol):
    #: SSE (True) or one JSON body (False)
    stream: bool

    def step(self, i: int, res: StepResult) -> bytes | None:
        """Choice ``i`` produced ``res``: the SSE bytes to send now (streaming), else None."""

    def end(self, usage: dict[str, Any]) -> Any:
        """The stream's last bytes (streaming), or the response body as a dict (unary)."""

    def error_event(self, body: dict[str, Any]) -> bytes:
        """An error after the 200 was sent, as an SSE event."""


class _Base:
    stream = False

    def __init__(self, engine: Any, req: Any, rid: str, choices: int, created: int) -> None:
        self.model = engine.model
        self.req = req
        self.created = created
        self.choices = choices
        self.texts = TokenTexts(engine.tokenizer)

    def error_event(self, body: dict[str, Any]) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


# -- chat completions ---------------------------------------------------------------------------------


class ChatStreamWriter(_Base):
    """``chat.completion.chunk`` events: reasoning split, then tool calls, then logprobs per chunk."""

    stream = True

    def __init__(self, engine: Any, req: oai.ChatCompletionRequest, rid: str, choices: int, created: int) -> None:
        super().__init__(engine, req, rid, choices, created)
        self.id = oai.chat_completion_id(rid)
        self.role_sent = [False] * choices
        self.parsers = [engine.reasoning_parser(req) for _ in range(choices)]
        self.tool_calls = [engine.tool_calls(req) for _ in range(choices)]
        # logprob entries of tokens whose text a parser still holds: they ride on the next chunk sent
        self.pending: list[list[dict[str, Any]]] = [[] for _ in range(choices)]

    def step(self, i: int, res: StepResult) -> bytes | None:
        fr = oai.openai_finish_reason(res.finish_reason) if res.finish_reason is not None else None
        role = None
        if not self.role_sent[i]:
            role, self.role_sent[i] = "assistant", True
        if res.logprobs is not None:
            self.pending[i] += chat_entries(self.texts, res.logprobs)
        delta = reasoning.stream_delta(self.parsers[i], res.text, role=role, final=fr is not None)
        delta, fr = tool_call_output.stream_delta(self.tool_calls[i], delta, fr)
        if delta is None:
            return None
        logprobs = None
        if self.pending[i]:
            logprobs = chat_logprobs(self.pending[i])
            self.pending[i] = []
        return sse_data(oai.chat_chunk(self.id, self.model, self.created, delta, index=i, finish_reason=fr,
                                       logprobs=logprobs, stop_reason=res.stop_reason))

    def end(self, usage: dict[str, Any]) -> bytes:
        if self.req.include_usage:
            return sse_data(oai.chat_usage_chunk(self.id, self.model, self.created, usage)) + DONE
        return DONE


class ChatUnaryWriter(_Base):
    """One ``chat.completion`` body."""

    def __init__(self, engine: Any, req: oai.ChatCompletionRequest, rid: str, choices: int, created: int) -> None:
        super().__init__(engine, req, rid, choices, created)
        self.id = oai.chat_completion_id(rid)
        self.parsers = [engine.reasoning_parser(req) for _ in range(choices)]
        self.tool_calls = [engine.tool_calls(req) for _ in range(choices)]
        self.parts: list[list[str]] = [[] for _ in range(choices)]
        self.finish: list[tuple[str | None, Any]] = [(None, None)] * choices
        self.logprobs: list[list[dict[str, Any]] | None] = [
            [] if req.logprobs else None for _ in range(choices)]

    def step(self, i: int, res: StepResult) -> None:
        if res.text:
            self.parts[i].append(res.text)
        entries = self.logprobs[i]
        if res.logprobs is not None and entries is not None:
            entries += chat_entries(self.texts, res.logprobs)
        if res.finish_reason is not None:
            self.finish[i] = (oai.openai_finish_reason(res.finish_reason), res.stop_reason)

    def end(self, usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for i in range(self.choices):
            thought, content = reasoning.message_parts(self.parsers[i], "".join(self.parts[i]))
            content, calls, fin = tool_call_output.message_parts(self.tool_calls[i], content, self.finish[i][0])
            entries = self.logprobs[i]
            choices.append(oai.chat_choice(i, content, fin, reasoning_content=thought, tool_calls=calls,
                                           logprobs=chat_logprobs(entries) if entries is not None else None,
                                           stop_reason=self.finish[i][1]))
        return oai.chat_completion(self.id, self.model, self.created, choices, usage)


# -- text completions ---------------------------------------------------------------------------------


class CompletionStreamWriter(_Base):
    """``text_completion`` events."""

    stream = True

    def __init__(self, engine: Any, req: oai.CompletionRequest, rid: str, choices: int, created: int) -> None:
        super().__init__(engine, req, rid, choices, created)
        self.id = oai.completion_id(rid)
        self.logprobs = [CompletionLogprobs(self.texts) for _ in range(choices)] if req.logprobs is not None else None

    def step(self, i: int, res: StepResult) -> bytes | None:
        fr = oai.openai_finish_reason(res.finish_reason) if res.finish_reason is not None else None
        logprobs = None
        if res.logprobs is not None and self.logprobs is not None:
            logprobs = self.logprobs[i].add(res.logprobs)
        if not res.text and fr is None and logprobs is None:
            return None
        return sse_data(oai.completion_chunk(self.id, self.model, self.created, res.text, index=i,
                                             finish_reason=fr, logprobs=logprobs, stop_reason=res.stop_reason))

    def end(self, usage: dict[str, Any]) -> bytes:
        if self.req.include_usage:
            return sse_data(oai.completion_usage_chunk(self.id, self.model, self.created, usage)) + DONE
        return DONE


class CompletionUnaryWriter(_Base):
    """One ``text_completion`` body."""

    def __init__(self, engine: Any, req: oai.CompletionRequest, rid: str, choices: int, created: int) -> None:
        super().__init__(engine, req, rid, choices, created)
        self.id = oai.completion_id(rid)
        self.parts: list[list[str]] = [[] for _ in range(choices)]
        self.finish: list[tuple[str | None, Any]] = [(None, None)] * choices
        self.logprobs = [CompletionLogprobs(self.texts) for _ in range(choices)] if req.logprobs is not None else None

    def step(self, i: int, res: StepResult) -> None:
        if res.text:
            self.parts[i].append(res.text)
        if res.logprobs is not None and self.logprobs is not None:
            self.logprobs[i].add(res.logprobs)
        if res.finish_reason is not None:
            self.finish[i] = (oai.openai_finish_reason(res.finish_reason), res.stop_reason)

    def end(self, usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for i in range(self.choices):
            c: dict[str, Any] = {"index": i, "text": "".join(self.parts[i]),
                                 "logprobs": self.logprobs[i].whole() if self.logprobs is not None else None,
                                 "finish_reason": self.finish[i][0]}
            if self.finish[i][1] is not None:
                c["stop_reason"] = self.finish[i][1]
            choices.append(c)
        return oai.completion_response(self.id, self.model, self.created, choices, usage)
