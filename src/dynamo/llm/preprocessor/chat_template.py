"""Chat-template rendering compatible with Hugging Face ``apply_chat_template`` (reference §4.1 step 1).

The Jinja environment mirrors the one ``transformers`` builds: an immutable sandbox with
``trim_blocks``/``lstrip_blocks`` and the loop-controls extension, a ``tojson`` filter with
``indent``/``separators``/``sort_keys``, and ``raise_exception``/``strftime_now`` globals. The
``{% generation %}`` markers (used by HF only to compute assistant masks) are stripped from the source.
Compiled templates are shared process-wide; renders of deterministic templates are memoised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dynamo.llm.preprocessor.render_cache import RENDER_CACHE_BYTES, RenderCache

DEFAULT_TEMPLATE_NAME = "default"
TOOL_USE_TEMPLATE_NAME = "tool_use"

_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_HTML_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", ord("'"): "\\u0027"}
_PROBE = "\u2063dynamo-content-probe\u2063"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered prompt and its cache key (None when the render may not be cached)."""

    text: str
    key: bytes | None = None


class ChatTemplateError(ValueError):
    """The template raised (``raise_exception``) or failed to render; maps to HTTP 400."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # json.dumps's default separators are what HF templates were written against (", " / ": ").
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys, default=_json_default)


def _json_default(value: Any) -> Any:
    # Jinja filters such as `map` yield generators; minijinja would hand tojson a sequence.
    if isinstance(value, jinja2.Undefined):
        return None
    if hasattr(value, "__iter__"):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _tojson_html_safe(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return _tojson(value, ensure_ascii, indent, separators, sort_keys).translate(_HTML_ESCAPES)


def _length(value: Any) -> int:
    # minijinja semantics (reference §4.1): None / undefined have length 0 instead of raising.
    if value is None or isinstance(value, jinja2.Undefined):
        return 0
    return len(value)


def _make_env(escape_html: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson_html_safe if escape_html else _tojson
    env.filters["length"] = _length
    env.filters["count"] = _length
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENVS: dict[bool, ImmutableSandboxedEnvironment] = {}


@lru_cache(maxsize=64)
def compile_template(source: str, escape_html: bool = False) -> jinja2.Template:
    """Compile (once per process) a chat template source."""
    env = _ENVS.get(escape_html)
    if env is None:
        env = _ENVS[escape_html] = _make_env(escape_html)
    return env.from_string(_GENERATION_TAG.sub("", source))


def load_template_source(
    model_dir: str | Path | None = None,
    *,
    custom_template_path: str | Path | None = None,
    tokenizer_config: Mapping[str, Any] | None = None,
) -> str | list[dict[str, str]] | None:
    """Find the chat template: ``--custom-jinja-template`` file, else ``tokenizer_config.json``'s
    ``chat_template``, else ``chat_template.jinja`` in the model folder."""
    if custom_template_path is not None:
        return Path(custom_template_path).read_text(encoding="utf-8")
    if tokenizer_config is None and model_dir is not None:
        cfg_path = Path(model_dir) / "tokenizer_config.json"
        if cfg_path.is_file():
            tokenizer_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    if tokenizer_config and tokenizer_config.get("chat_template") is not None:
        return tokenizer_config["chat_template"]
    if model_dir is not None:
        jinja = Path(model_dir) / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
    return None


def _named_templates(source: str | Sequence[Mapping[str, str]] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(source, str):
        return {DEFAULT_TEMPLATE_NAME: source}
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    named = {str(item["name"]): str(item["template"]) for item in source}
    if not named:
        raise ValueError("chat_template list is empty")
    return named


class ChatTemplate:
    """Renders OpenAI chat messages into a prompt string with a model's chat template."""

    __slots__ = (
        "_arrays_only",
        "_cacheable",
        "_compiled",
        "_mentions_reasoning",
        "base_context",
        "escape_html",
        "exclude_tools_when_tool_choice_none",
        "render_cache",
        "templates",
    )

    def __init__(
        self,
        source: str | Sequence[Mapping[str, str]] | Mapping[str, str],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        extra_context: Mapping[str, Any] | None = None,
        exclude_tools_when_tool_choice_none: bool = True,
        escape_html: bool = False,
        render_cache_bytes: int = RENDER_CACHE_BYTES,
    ) -> None:
        """``source``: a template string, HF's list of ``{name, template}``, or a name->source map.

        ``escape_html=True`` makes ``tojson`` escape ``< > & '`` as ``\\u003c``… like minijinja's.
        ``extra_context``: mixins such as ``date_string``; request kwargs still win over them.
        ``render_cache_bytes``: budget of the render cache (0 disables it).
        """
        self.templates = _named_templates(source)
        self.escape_html = escape_html
        self._compiled = {name: compile_template(src, escape_html) for name, src in self.templates.items()}
        self.exclude_tools_when_tool_choice_none = exclude_tools_when_tool_choice_none
        base: dict[str, Any] = {"bos_token": bos_token or "", "eos_token": eos_token or "",
                                "unk_token": unk_token or ""}
        if pad_token is not None:
            base["pad_token"] = pad_token
        if extra_context:
            base.update(extra_context)
        self.base_context = base
        sources = "".join(self.templates.values())
        self._mentions_reasoning = "reasoning_content" in sources
        # Time-dependent templates must not be memoised.
        self._cacheable = render_cache_bytes > 0 and "strftime_now" not in sources and "now(" not in sources
        self.render_cache = RenderCache(render_cache_bytes)
        self._arrays_only = self._probe_arrays_only()

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        custom_template_path: str | Path | None = None,
        **kwargs: Any,
    ) -> ChatTemplate | None:
        """Build from a HF-style folder; ``None`` if the model has no chat template (base model)."""
        cfg_path = Path(model_dir) / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        source = load_template_source(model_dir, custom_template_path=custom_template_path, tokenizer_config=cfg)
        if source is None:
            return None
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if key not in kwargs:
                val = cfg.get(key)
                kwargs[key] = val.get("content") if isinstance(val, dict) else val
        return cls(source, **kwargs)

    # -- message normalisation ---------------------------------------------------------------------

    @property
    def requires_content_arrays(self) -> bool:
        """Whether the template only renders list-of-parts content (probed at construction)."""
        return self._arrays_only

    def _probe_arrays_only(self) -> bool:
        tmpl = self._compiled.get(DEFAULT_TEMPLATE_NAME) or next(iter(self._compiled.values()))
        as_str = [{"role": "user", "content": _PROBE}]
        as_list = [{"role": "user", "content": [{"type": "text", "text": _PROBE}]}]
        try:
            if _PROBE in tmpl.render(messages=as_str, add_generation_prompt=True, **self.base_context):
                return False
        except Exception:  # a template that rejects the probe just is not string-capable
            pass
        try:
            return _PROBE in tmpl.render(messages=as_list, add_generation_prompt=True, **self.base_context)
        except Exception:
            return False

    def normalize_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        parse_tool_arguments: bool = True,
        none_content_as_empty: bool = False,
    ) -> list[dict[str, Any]]:
        """Adapt OpenAI messages to what templates expect (without mutating the input).

        Content-part arrays become strings (text parts joined by newlines) unless the template only
        renders arrays, in which case strings become one text part; tool-call ``arguments`` JSON
        strings become objects; ``reasoning_content`` is inlined as ``<think>…</think>`` when the
        template does not render it itself.
        """
        out: list[dict[str, Any]] = []
        arrays_only = self._arrays_only
        for msg in messages:
            m = dict(msg)
            content = m.get("content")
            if content is None and none_content_as_empty:
                m["content"] = content = ""
            if arrays_only:
                if isinstance(content, str):
                    m["content"] = [{"type": "text", "text": content}]
            elif isinstance(content, list):
                m["content"] = "\n".join(
                    p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text"
                )
            tool_calls = m.get("tool_calls")
            if tool_calls and parse_tool_arguments:
                m["tool_calls"] = [_parse_tool_call_arguments(tc) for tc in tool_calls]
            reasoning = m.get("reasoning_content")
            if reasoning and not self._mentions_reasoning and m.get("role") == "assistant":
                body = m.get("content")
                if isinstance(body, str) or body is None:
                    m["content"] = f"<think>{reasoning}</think>{body or ''}"
                m.pop("reasoning_content", None)
            out.append(m)
        return out

    # -- rendering ---------------------------------------------------------------------------------

    def select(self, tools: Sequence[Any] | None) -> str:
        """Name of the template to use: ``tool_use`` when tools are given and it exists."""
        if tools and TOOL_USE_TEMPLATE_NAME in self._compiled:
            return TOOL_USE_TEMPLATE_NAME
        if DEFAULT_TEMPLATE_NAME in self._compiled:
            return DEFAULT_TEMPLATE_NAME
        return next(iter(self._compiled))

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
        normalize: bool = True,
    ) -> str:
        """Render the prompt and remember it. ``add_generation_prompt`` is always true in the frontend (§4.1)."""
        rendered = self.render_keyed(messages, tools=tools, tool_choice=tool_choice,
                                     chat_template_kwargs=chat_template_kwargs,
                                     add_generation_prompt=add_generation_prompt, normalize=normalize)
        self.remember(rendered)
        return rendered.text

    def render_keyed(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
        normalize: bool = True,
    ) -> Rendered:
        """Render (or find in the cache) without caching the result.

        The caller passes the result to :meth:`remember` once the prompt proved usable, so that
        rejected requests (over the context length) take no room in the cache.
        """
        if tool_choice == "none" and self.exclude_tools_when_tool_choice_none:
            tools = None
        if not tools:
            tools = None
        msgs = self.normalize_messages(messages) if normalize else list(messages)
        name = self.select(tools)

        key: bytes | None = None
        if self._cacheable:
            try:
                key = orjson.dumps([name, msgs, tools, chat_template_kwargs, add_generation_prompt],
                                   option=orjson.OPT_SORT_KEYS)
            except TypeError:
                key = None
            if key is not None:
                hit = self.render_cache.get(key)
                if hit is not None:
                    return Rendered(hit)  # already cached: nothing to remember

        ctx = dict(self.base_context)
        ctx["messages"] = msgs
        ctx["tools"] = tools
        ctx["add_generation_prompt"] = add_generation_prompt
        if chat_template_kwargs:
            ctx.update(chat_template_kwargs)
        try:
            try:
                text = self._compiled[name].render(ctx)
            except (TypeError, jinja2.exceptions.UndefinedError):
                if not normalize:
                    raise
                text = self._render_fallbacks(name, ctx, messages)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"chat template error: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc
        return Rendered(text, key)

    def remember(self, rendered: Rendered) -> None:
        if rendered.key is not None:
            self.render_cache.put(rendered.key, rendered.text)

    def _render_fallbacks(self, name: str, ctx: dict[str, Any], messages: Sequence[Mapping[str, Any]]) -> str:
        """Retry a render that hit a type error with the other message shapes templates assume.

        Some templates concatenate tool-call ``arguments`` as strings (DeepSeek), others test
        ``'</think>' in message.content`` and cannot take a ``None`` content (Qwen3, gpt-oss).
        """
        has_tool_calls = any(m.get("tool_calls") for m in messages)
        has_none = any(m.get("content") is None for m in messages)
        variants = []
        if has_tool_calls:
            variants.append((False, False))
        if has_none:
            variants.append((True, True))
            if has_tool_calls:
                variants.append((False, True))
        last: Exception | None = None
        for parse, empty in variants:
            ctx["messages"] = self.normalize_messages(messages, parse_tool_arguments=parse,
                                                      none_content_as_empty=empty)
            try:
                return self._compiled[name].render(ctx)
            except (TypeError, jinja2.exceptions.UndefinedError) as exc:
                last = exc
        raise last or TypeError("chat template failed to render")


def _parse_tool_call_arguments(tool_call: Any) -> Any:
    if not isinstance(tool_call, Mapping):
        return tool_call
    fn = tool_call.get("function")
    if not isinstance(fn, Mapping):
        return tool_call
    args = fn.get("arguments")
    if not isinstance(args, str):
        return tool_call
    try:
        parsed = json.loads(args)
    except ValueError:
        return tool_call
    if not isinstance(parsed, dict):
        return tool_call
    return {**tool_call, "function": {**fn, "arguments": parsed}}
