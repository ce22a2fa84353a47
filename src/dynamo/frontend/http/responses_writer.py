"""Responses API writers: the chat pipeline's steps (reasoning split, then tool calls) as a ``response``
object, or as its stream of typed events.

Output items follow the order the model wrote them: a ``reasoning`` item, a ``message`` item with one
``output_text`` part, ``function_call`` items. Streaming opens an item when its first text arrives and
closes it (``*.done`` events) when the next kind starts or the response ends; a call arrives whole, so
its arguments go out as one delta.
"""

from __future__ import annotations

from typing import Any

import orjson

from dynamo.frontend import reasoning, tool_call_output
from dynamo.frontend.logprobs_output import TokenTexts, chat_entries
from dynamo.llm.postprocessor.stop import StepResult
from dynamo.llm.protocols import openai as oai
from dynamo.llm.protocols import responses as rs


class ResponsesStreamWriter:
    """The typed event stream; its items double as the unary response's output (see below)."""

    stream = True

    def __init__(self, engine: Any, chat: oai.ChatCompletionRequest, rreq: rs.ResponsesRequest, rid: str,
                 created: int) -> None:
        self.rreq = rreq
        self.rid = rid
        self.created = created
        self.parser = engine.reasoning_parser(chat)
        self.calls = engine.tool_calls(chat)
        self.texts = TokenTexts(engine.tokenizer)
        self.want_logprobs = rreq.top_logprobs is not None
        self.finish: str | None = None
        self.seq = 0
        self.started = False
        self.output: list[dict[str, Any]] = []  # closed items, for the final response object
        self.open_kind: str | None = None  # "reasoning" | "message" while an item is streaming
        self.open_text: list[str] = []
        self.open_logprobs: list[dict[str, Any]] = []
        self.num_calls = 0
        self.pending: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {}

    def _logprobs(self, res: StepResult) -> list[dict[str, Any]]:
        if not self.want_logprobs or res.logprobs is None:
            return []
        return chat_entries(self.texts, res.logprobs)

    def _status(self) -> tuple[str, str | None]:
        if self.finish == "length":
            return "incomplete", "max_output_tokens"
        return "completed", None


    # -- SSE framing --------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        if not self.stream:
            return b""
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        snapshot = rs.response_object(self.rreq, self.rid, self.created, status="in_progress", output=[])
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    # -- items ----------------------------------------------------------------------------------------

    @property
    def _index(self) -> int:
        return len(self.output)

    def _item_id(self, kind: str) -> str:
        return f"{'rs' if kind == 'reasoning' else 'msg'}_{self.rid}_{self._index}"

    def _open(self, kind: str) -> list[bytes]:
        if self.open_kind == kind:
            return []
        out = self._close()
        self.open_kind = kind
        item_id = self._item_id(kind)
        if kind == "reasoning":
            item = rs.reasoning_item(item_id, "", "in_progress")
            item["content"] = []
            out.append(self._event("response.output_item.added", output_index=self._index, item=item))
            out.append(self._event("response.content_part.added", item_id=item_id, output_index=self._index,
                                   content_index=0, part={"type": "reasoning_text", "text": ""}))
        else:
            item = rs.message_item(item_id, "", "in_progress", None)
            item["content"] = []
            out.append(self._event("response.output_item.added", output_index=self._index, item=item))
            out.append(self._event("response.content_part.added", item_id=item_id, output_index=self._index,
                                   content_index=0, part=rs.output_text_part("", None)))
        return out

    def _close(self, status: str = "completed") -> list[bytes]:
        kind = self.open_kind
        if kind is None:
            return []
        item_id = self._item_id(kind)
        text = "".join(self.open_text)
        idx = self._index
        if kind == "reasoning":
            item = rs.reasoning_item(item_id, text, "completed")
            out = [self._event("response.reasoning_text.done", item_id=item_id, output_index=idx, content_index=0,
                               text=text),
                   self._event("response.content_part.done", item_id=item_id, output_index=idx, content_index=0,
                               part=item["content"][0])]
        else:
            lps = self.open_logprobs if self.want_logprobs else None
            item = rs.message_item(item_id, text, status, lps)
            out = [self._event("response.output_text.done", item_id=item_id, output_index=idx, content_index=0,
                               text=text, logprobs=lps or []),
                   self._event("response.content_part.done", item_id=item_id, output_index=idx, content_index=0,
                               part=item["content"][0])]
        out.append(self._event("response.output_item.done", output_index=idx, item=item))
        self.output.append(item)
        self.open_kind = None
        self.open_text = []
        self.open_logprobs = []
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        out = self._close()
        idx = self._index
        item_id = f"fc_{self.rid}_{self.num_calls}"
        self.num_calls += 1
        args = call["function"]["arguments"]
        out.append(self._event("response.output_item.added", output_index=idx,
                               item=rs.function_call_item(item_id, call, "in_progress", arguments="")))
        out.append(self._event("response.function_call_arguments.delta", item_id=item_id, output_index=idx,
                               delta=args))
        out.append(self._event("response.function_call_arguments.done", item_id=item_id, output_index=idx,
                               name=call["function"]["name"], arguments=args))
        item = rs.function_call_item(item_id, call, "completed")
        out.append(self._event("response.output_item.done", output_index=idx, item=item))
        self.output.append(item)
        return out

    # -- writer ---------------------------------------------------------------------------------------

    def step(self, i: int, res: StepResult) -> bytes | None:
        out = self._start()
        fr = oai.openai_finish_reason(res.finish_reason) if res.finish_reason is not None else None
        if fr is not None:
            self.finish = fr
        # logprobs of tokens a parser still holds ride on the next text delta
        self.pending += self._logprobs(res)
        delta = reasoning.stream_delta(self.parser, res.text, role=None, final=fr is not None)
        delta, _ = tool_call_output.stream_delta(self.calls, delta, fr)
        if delta is not None:
            thought = delta.get("reasoning_content")
            if thought:
                self.pending = []  # they were reasoning tokens: output_text logprobs cover the answer only
                out += self._open("reasoning")
                self.open_text.append(thought)
                out.append(self._event("response.reasoning_text.delta", item_id=self._item_id("reasoning"),
                                       output_index=self._index, content_index=0, delta=thought))
            content = delta.get("content")
            if content:
                out += self._open("message")
                self.open_text.append(content)
                entries, self.pending = self.pending, []
                self.open_logprobs += entries
                out.append(self._event("response.output_text.delta", item_id=self._item_id("message"),
                                       output_index=self._index, content_index=0, delta=content,
                                       logprobs=entries))
            for call in delta.get("tool_calls") or ():
                out += self._call({"id": call["id"], "function": call["function"]})
        return b"".join(out) if out else None

    def end(self, usage: dict[str, Any]) -> bytes:
        out = self._start()
        status, reason = self._status()
        if not self.output and self.open_kind is None:
            out += self._open("message")  # an empty answer is still one (empty) message
        out += self._close(status)
        self.final = rs.response_object(self.rreq, self.rid, self.created, status=status, output=self.output,
                                        usage=rs.usage(usage), incomplete_reason=reason)
        out.append(self._event("response.incomplete" if status == "incomplete" else "response.completed",
                               response=self.final))
        return b"".join(out)

    def error_event(self, body: dict[str, Any]) -> bytes:
        err = body.get("error", body)
        return self._event("error", code=str(err.get("code")), message=err.get("message"), param=err.get("param"),
                           error=err)


class ResponsesUnaryWriter(ResponsesStreamWriter):
    """Built by the streaming state machine with event encoding off, so that both modes answer with
    the same items (the same reasoning/answer split, the same logprobs on the same text)."""

    stream = False

    def step(self, i: int, res: StepResult) -> None:
        super().step(i, res)

    def end(self, usage: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        super().end(usage)
        return self.final
