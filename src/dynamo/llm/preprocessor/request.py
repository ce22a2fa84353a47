"""OpenAI request -> ``PreprocessedRequest`` (reference §4.1 "Preprocessor", steps 1-5).

Template (chat only) -> tokenize -> context-length check -> stop conditions -> sampling/output
options -> routing hints. Pure CPU work: the HTTP layer may run it in a thread for long prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynamo.llm.preprocessor.chat_template import ChatTemplate, ChatTemplateError, Rendered
from dynamo.llm.preprocessor.tokenizer import Tokenizer
from dynamo.llm.preprocessor.tool_choice import tool_choice_guided
from dynamo.llm.protocols.engine import (
    OutputOptions,
    PreprocessedRequest,
    RoutingHints,
    SamplingOptions,
    StopConditions,
)
from dynamo.llm.protocols.openai import ChatCompletionRequest, CompletionRequest
from dynamo.runtime.errors import InvalidArgument

#: max_tokens when the request gives none and the model's context length is unknown
DEFAULT_MAX_TOKENS = 4096
#: batched completions: prompts x n must stay within this many choices (§4.2)
MAX_TOTAL_CHOICES = 128


@dataclass(slots=True)
class PreprocessResult:
    request: PreprocessedRequest
    prompt_tokens: int
    #: the rendered chat prompt / the text prompt (None for token-array prompts)
    formatted_prompt: str | None


class OpenAIPreprocessor:
    """Per-model preprocessor built from a model card's tokenizer, template and context length."""

    __slots__ = (
        "chat_template",
        "context_length",
        "default_max_tokens",
        "eos_token_ids",
        "mdc_sum",
        "model_name",
        "tokenizer",
    )

    def __init__(
        self,
        *,
        model_name: str,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate | None = None,
        context_length: int = 0,
        mdc_sum: str | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.context_length = context_length
        self.mdc_sum = mdc_sum
        self.default_max_tokens = default_max_tokens
        self.eos_token_ids: list[int] = list(tokenizer.eos_token_ids)

    @classmethod
    def from_card(
        cls,
        card: Any,
        *,
        custom_template_path: str | Path | None = None,
        exclude_tools_when_tool_choice_none: bool = True,
        escape_html: bool = False,
    ) -> OpenAIPreprocessor:
        """Build from a ``ModelDeploymentCard`` whose ``model_path`` is a local HF-style folder.

        Template precedence: ``custom_template_path`` > the card's ``chat_template`` > the folder's.
        """
        tok = Tokenizer.from_dir(card.model_path)
        source: Any = None
        if custom_template_path is not None:
            source = Path(custom_template_path).read_text(encoding="utf-8")
        elif getattr(card, "chat_template", None):
            source = card.chat_template
        else:
            source = tok.chat_template_source
        template = None
        if source is not None:
            template = ChatTemplate(
                source,
                bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token,
                pad_token=tok.pad_token,
                exclude_tools_when_tool_choice_none=exclude_tools_when_tool_choice_none,
                escape_html=escape_html,
            )
        return cls(model_name=card.name, tokenizer=tok, chat_template=template,
                   context_length=card.context_length, mdc_sum=card.checksum())

    # -- chat ----------------------------------------------------------------------------------------

    def render_chat(self, req: ChatCompletionRequest) -> str:
        rendered = self._render_chat(req)
        self.chat_template.remember(rendered)  # type: ignore[union-attr]
        return rendered.text

    def _render_chat(self, req: ChatCompletionRequest) -> Rendered:
        if self.chat_template is None:
            raise InvalidArgument(f"model '{self.model_name}' has no chat template; use /v1/completions")
        messages = []
        for m in req.messages:
            d = m.model_dump(exclude_none=True)
            # templates test `message.content is none` for tool-call turns, so keep the key
            d.setdefault("content", None)
            messages.append(d)
        tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools] if req.tools else None
        try:
            return self.chat_template.render_keyed(
                messages, tools=tools, tool_choice=req.tool_choice_name,
                chat_template_kwargs=req.template_kwargs,
            )
        except ChatTemplateError as exc:
            raise InvalidArgument(str(exc)) from exc

    def preprocess_chat(self, req: ChatCompletionRequest, request_id: str | None = None) -> PreprocessResult:
        nvext = req.nvext
        rendered: Rendered | None = None
        if nvext is not None and nvext.use_raw_prompt:
            # raw prompt: the concatenated message texts, untemplated
            prompt = "".join(_content_text(m.content) for m in req.messages)
        else:
            rendered = self._render_chat(req)
            prompt = rendered.text
        token_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        built = self._build(req, token_ids, req.effective_max_tokens, logprobs, request_id)
        if rendered is not None:
            # Only now: a prompt over the context length (rejected by _build) must not take cache room.
            self.chat_template.remember(rendered)  # type: ignore[union-attr]
        return PreprocessResult(built, len(token_ids), prompt)

    # -- completions ---------------------------------------------------------------------------------

    def preprocess_completion(
        self, req: CompletionRequest, request_id: str | None = None
    ) -> list[PreprocessResult]:
        """One result per prompt (batched prompts fan out; ids ``{request_id}-{i}`` when N > 1)."""
        prompts = req.prompts
        if len(prompts) * (req.n or 1) > MAX_TOTAL_CHOICES:
            raise InvalidArgument(f"Validation: prompt: {len(prompts)} prompts x n={req.n or 1} exceeds the "
                                  f"limit of {MAX_TOTAL_CHOICES} choices")
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        if isinstance(prompts[0], str):
            texts: list[str] = prompts  # type: ignore[assignment]
            encoded = (
                [self.tokenizer.encode(texts[0], add_special_tokens=add_special)]
                if len(texts) == 1 else self.tokenizer.encode_batch(texts, add_special_tokens=add_special)
            )
            formatted: list[str | None] = list(texts)
        else:
            encoded = [list(p) for p in prompts]  # type: ignore[arg-type]
            vocab = self.tokenizer.vocab_size
            for ids in encoded:
                if max(ids) >= vocab:
                    raise InvalidArgument(f"Validation: prompt: token id {max(ids)} is out of vocabulary "
                                          f"(size {vocab})")
            formatted = [None] * len(encoded)
        many = len(encoded) > 1
        out = []
        logprobs = req.logprobs
        for i, ids in enumerate(encoded):
            rid = f"{request_id}-{i}" if (many and request_id is not None) else request_id
            out.append(PreprocessResult(self._build(req, ids, req.max_tokens, logprobs, rid), len(ids), formatted[i]))
        return out

    # -- shared --------------------------------------------------------------------------------------

    def _build(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        token_ids: list[int],
        max_tokens: int | None,
        logprobs: int | None,
        request_id: str | None,
    ) -> PreprocessedRequest:
        n_prompt = len(token_ids)
        ctx = self.context_length
        if ctx > 0 and n_prompt >= ctx:
            raise InvalidArgument(
                f"This model's maximum context length is {ctx} tokens. However, your request has "
                f"{n_prompt} input tokens. Please reduce the length of the input messages."
            )
        if max_tokens is None:
            max_tokens = ctx - n_prompt if ctx > 0 else self.default_max_tokens
        elif ctx > 0 and n_prompt + max_tokens > ctx:
            raise InvalidArgument(
                f"Validation: max_tokens: {max_tokens} output tokens plus {n_prompt} input tokens exceed this "
                f"model's maximum context length of {ctx} tokens"
            )

        nvext = req.nvext
        ignore_eos = bool(req.ignore_eos or (nvext is not None and nvext.ignore_eos))
        hidden: list[int] | None
        if ignore_eos:
            hidden = None
        else:
            hidden = list(self.eos_token_ids)
            if req.stop_token_ids:
                hidden.extend(t for t in req.stop_token_ids if t not in hidden)
        stop = req.stop_list or None
        stop_conditions = StopConditions(
            max_tokens=max_tokens,
            stop=stop,
            stop_token_ids_hidden=hidden or None,
            min_tokens=req.min_tokens,
            ignore_eos=True if ignore_eos else None,
        )
        guided = _guided_decoding(req)
        if guided is None and isinstance(req, ChatCompletionRequest):
            guided = tool_choice_guided(req)
        sampling = SamplingOptions(
            n=req.n,
            best_of=req.best_of,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            seed=req.seed,
            include_stop_str_in_output=req.include_stop_str_in_output,
            guided_decoding=guided,
        )
        output = OutputOptions(
            logprobs=logprobs,
            prompt_logprobs=req.prompt_logprobs,
            skip_special_tokens=req.skip_special_tokens,
        )
        routing = None
        annotations: list[str] = []
        extra_args: dict[str, Any] | None = None
        if nvext is not None:
            hints = nvext.agent_hints
            if (nvext.backend_instance_id is not None or nvext.dp_rank is not None or nvext.lora_name
                    or (hints is not None and (hints.priority is not None or hints.osl is not None))):
                routing = RoutingHints(
                    backend_instance_id=nvext.backend_instance_id,
                    dp_rank=nvext.dp_rank,
                    lora_name=nvext.lora_name,
                    priority=hints.priority if hints is not None else None,
                    expected_output_tokens=hints.osl if hints is not None else None,
                )
            if nvext.annotations:
                annotations = list(nvext.annotations)
            targets = nvext.router
            if targets is not None and (targets.ttft_target is not None or targets.itl_target is not None):
                # Carried as the reference carries them: extra_args.ttft_target / itl_target (ms).
                extra_args = {k: v for k, v in (("ttft_target", targets.ttft_target),
                                                ("itl_target", targets.itl_target)) if v is not None}
        return PreprocessedRequest(
            model=self.model_name,
            token_ids=token_ids,
            stop_conditions=stop_conditions,
            sampling_options=sampling,
            output_options=output,
            eos_token_ids=[] if ignore_eos else list(self.eos_token_ids),
            mdc_sum=self.mdc_sum,
            annotations=annotations,
            routing=routing,
            request_id=request_id,
            extra_args=extra_args,
        )


#: what a content part without text (an image, audio) counts for in :func:`chat_request_chars`
NON_TEXT_PART_CHARS = 256


def chat_request_chars(req: ChatCompletionRequest) -> int:
    """Characters templating and tokenization will walk: message text (string or list-of-parts
    content), reasoning, tool-call arguments and tool definitions. Cheap: no model dumps."""
    n = 0
    for m in req.messages:
        content = m.content
        if isinstance(content, str):
            n += len(content)
        elif content:
            for part in content:
                n += len(part.text) if part.text else NON_TEXT_PART_CHARS
        if m.reasoning_content:
            n += len(m.reasoning_content)
        if m.tool_calls:
            for call in m.tool_calls:
                args = call.function.arguments
                n += len(args) if isinstance(args, str) else len(orjson.dumps(args)) if args else 0
    if req.tools:
        for tool in req.tools:
            fn = tool.function
            n += len(fn.name) + len(fn.description or "")
            if fn.parameters:
                n += len(orjson.dumps(fn.parameters))
    return n


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if getattr(p, "type", None) == "text")


def _guided_decoding(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any] | None:
    """``response_format`` / ``guided_*`` / ``nvext.guided_*`` -> one guided-decoding spec."""
    nv = req.nvext
    if req.guided_json is not None or (nv is not None and nv.guided_json is not None):
        return {"json": req.guided_json if req.guided_json is not None else nv.guided_json}  # type: ignore[union-attr]
    for key in ("regex", "choice", "grammar"):
        val = getattr(req, f"guided_{key}", None)
        if val is None and nv is not None:
            val = getattr(nv, f"guided_{key}", None)
        if val is not None:
            return {key: val}
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_object":
            return {"json_object": True}
        if rf.type == "json_schema":
            schema = rf.json_schema.schema_ if rf.json_schema is not None else None
            return {"json": schema if schema is not None else {}}
    return None


def fan_out(results: Sequence[PreprocessResult], n: int | None) -> list[tuple[int, PreprocessResult]]:
    """Pair each sub-request with the offset added to its choice indices (``i × n``, §4.2)."""
    per = n or 1
    return [(i * per, r) for i, r in enumerate(results)]
