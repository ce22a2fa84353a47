"""The ``generate`` endpoint of a vLLM worker: PreprocessedRequest in, LLMEngineOutput deltas out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from dynamo.llm.protocols.engine import CompletionUsage, LLMEngineOutput, PreprocessedRequest
from dynamo.runtime import errors
from dynamo.vllm import sampling

logger = logging.getLogger(__name__)


class VllmHandler:
    """Streams one vLLM request per call of :meth:`generate`.

    Contract: every item carries the tokens produced since the previous one; the last carries
    ``finish_reason`` and ``completion_usage`` (with the engine's own cached-token count). A ``stop``
    or ``kill`` from the caller aborts the engine request at once, so its KV blocks are freed before
    the caller sees the stream end. Invalid requests raise ``InvalidArgument``; a dead engine raises
    ``EngineShutdown``, which the frontend may migrate to another worker.
    """

    def __init__(self, engine: Any, *, data_parallel_size: int = 1, role: str = "aggregated") -> None:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError, VLLMNotFoundError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        self.engine = engine
        self.dp_size = data_parallel_size
        #: ``prefill`` workers compute the prompt (one token) and hand its KV to a decode worker through
        #: the engine's KV connector; ``decode`` workers take requests carrying that handoff
        self.role = role
        self._SamplingParams = SamplingParams
        self._Structured = StructuredOutputsParams
        self._delta = RequestOutputKind.DELTA
        self._dead = EngineDeadError
        self._client_error = VLLMClientError
        self._not_found = VLLMNotFoundError
        self._ids = itertools.count()
        self._tag = uuid.uuid4().hex[:8]
        #: requests being served now (request id -> prompt length), for logs and tests
        self.active: dict[str, int] = {}

    def sampling_params(self, request: PreprocessedRequest) -> Any:
        kw = sampling.sampling_kwargs(request)
        guided = sampling.guided_decoding(request)
        try:
            if guided is not None:
                kw["structured_outputs"] = self._Structured(**guided)
            transfer = self._kv_transfer_params(request)
            if transfer is not None:
                kw["extra_args"] = {**(kw.get("extra_args") or {}), "kv_transfer_params": transfer}
            if self.role == "prefill":
                kw["max_tokens"], kw["min_tokens"] = 1, 0
            return self._SamplingParams(output_kind=self._delta, **kw)
        except (TypeError, ValueError) as exc:
            raise errors.InvalidArgument(f"invalid sampling options: {exc}") from None

    def _kv_transfer_params(self, request: PreprocessedRequest) -> dict[str, Any] | None:
        """What the engine's KV connector needs (vLLM's ``kv_transfer_params`` protocol): a prefill asks
        for its KV to be kept for a remote decode; a decode passes on what its prefill returned.
        Connectors that find KV by content (the shared-storage example connector) ignore both."""
        if self.role == "prefill":
            return {"do_remote_decode": True}
        result = request.prefill_result
        if result is not None and isinstance(result.disaggregated_params, dict):
            params = result.disaggregated_params.get("kv_transfer_params")
            return params if isinstance(params, dict) else None
        return None

    async def generate(self, request: PreprocessedRequest, ctx: Any) -> AsyncIterator[LLMEngineOutput]:
        params = self.sampling_params(request)
        dp_rank = request.routing.dp_rank if request.routing is not None else None
        if dp_rank is not None and not 0 <= dp_rank < self.dp_size:
            raise errors.InvalidArgument(f"dp_rank {dp_rank} out of range [0, {self.dp_size})")
        # Unique per attempt: a migrated request may come back to this worker under the same id.
        rid = f"{ctx.id}-{self._tag}-{next(self._ids)}"
        prompt_len = len(request.token_ids)
        eos_ids = request.eos_token_ids
        k = request.output_options.logprobs or 0
        watcher = asyncio.get_running_loop().create_task(self._abort_when_stopped(ctx, rid))
        self.active[rid] = prompt_len
        finished = False
        generated = 0
        cached: int | None = None
        try:
            stream = self.engine.generate({"prompt_token_ids": request.token_ids}, params, rid,
                                          data_parallel_rank=dp_rank)
            async for out in stream:
                if out.num_cached_tokens is not None:
                    cached = out.num_cached_tokens
                o = out.outputs[0]
                tokens = list(o.token_ids)
                generated += len(tokens)
                item = LLMEngineOutput(token_ids=tokens)
                if o.logprobs:
                    item.log_probs, item.top_logprobs = sampling.logprob_fields(tokens, o.logprobs, k)
                    item.cum_log_probs = o.cumulative_logprob
                if out.finished:
                    finished = True
                    reason = sampling.finish_reason(o.finish_reason, o.stop_reason, eos_ids)
                    if reason == "cancelled" and not ctx.is_stopped():
                        # vLLM aborted it on its own (for example a prompt it cannot schedule)
                        reason = "error"
                    item.finish_reason = reason
                    if reason == "stop":
                        item.stop_reason = o.stop_reason
                    item.completion_usage = CompletionUsage(
                        prompt_tokens=prompt_len, completion_tokens=generated,
                        total_tokens=prompt_len + generated, cached_tokens=cached)
                    if self.role == "prefill":
                        # Never None, so the frontend can tell a finished prefill from a lost one.
                        item.disaggregated_params = {"kv_transfer_params": getattr(out, "kv_transfer_params", None)}
                yield item
        except self._dead as exc:
            raise errors.EngineShutdown(f"vLLM engine died: {exc}") from None
        except self._not_found as exc:  # e.g. an unknown LoRA adapter
            raise errors.NotFound(str(exc)) from None
        except (self._client_error, ValueError, TypeError) as exc:
            # vLLM validates prompts, parameters and grammars when the request is added
            raise errors.InvalidArgument(str(exc)) from None
        finally:
            watcher.cancel()
            self.active.pop(rid, None)
            if not finished:
                # Closed early (client gone, kill, error): free the sequence now.
                with contextlib.suppress(Exception):
                    await self.engine.abort(rid)

    async def _abort_when_stopped(self, ctx: Any, rid: str) -> None:
        await ctx.stopped()
        await self.engine.abort(rid)
