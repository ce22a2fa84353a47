"""Chat templates rendered like Hugging Face's apply_chat_template (reference §4.1 step 1)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from dynamo.llm.preprocessor.chat_template import ChatTemplate, ChatTemplateError, load_template_source
from dynamo.llm.preprocessor.tokenizer import Tokenizer

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
QWEN3 = DATA / "models" / "Qwen3-0.6B"
TEMPLATES = sorted((DATA / "chat_templates").glob("*.jinja"))

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
QWEN3_EXPECTED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a <city> & region",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def qwen3() -> ChatTemplate:
    tmpl = ChatTemplate.from_model_dir(QWEN3)
    assert tmpl is not None
    return tmpl


@pytest.fixture(scope="module")
def qwen3_tok() -> Tokenizer:
    return Tokenizer.from_dir(QWEN3)


def test_qwen3_render_matches_hf_exactly(qwen3: ChatTemplate, qwen3_tok: Tokenizer) -> None:
    text = qwen3.render(CONVERSATION)
    assert text == QWEN3_EXPECTED
    ids = qwen3_tok.encode(text)
    assert len(ids) == 26
    assert ids[:3] == [151644, 8948, 198]
    assert qwen3_tok.decode(ids) == text


def test_qwen3_template_file_is_the_tokenizer_config_one(qwen3: ChatTemplate) -> None:
    jinja = (DATA / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    assert qwen3.templates["default"] == jinja


def test_enable_thinking_kwarg(qwen3: ChatTemplate) -> None:
    text = qwen3.render(CONVERSATION, chat_template_kwargs={"enable_thinking": False})
    assert text == QWEN3_EXPECTED + "<think>\n\n</think>\n\n"


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_every_template_renders_simple_conversation(path: Path) -> None:
    tmpl = ChatTemplate(path.read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    text = tmpl.render(CONVERSATION)
    assert "What is the capital of France?" in text
    multi = [*CONVERSATION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
    text2 = tmpl.render(multi)
    assert "Paris." in text2 and "And Spain?" in text2


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_every_template_renders_tool_conversation(path: Path) -> None:
    tmpl = ChatTemplate(path.read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    if "Mistral-Nemo" in path.name:
        # Mistral requires 9-char alphanumeric tool call ids
        msgs[1]["tool_calls"][0]["id"] = "abcdefghi"
        msgs[2]["tool_call_id"] = "abcdefghi"
    text = tmpl.render(msgs, tools=[WEATHER_TOOL])
    assert "sunny" in text
    assert "Paris" in text


def test_tool_call_arguments_parsed_to_objects(qwen3: ChatTemplate) -> None:
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
    ]
    text = qwen3.render(msgs)
    # parsed then re-serialised by the template's tojson: HF spacing, not the original compact string
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\":\"Paris\"}"  # input untouched


def test_string_concatenating_template_gets_raw_arguments() -> None:
    src = (DATA / "chat_templates" / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text(encoding="utf-8")
    tmpl = ChatTemplate(src, bos_token="<bos>")
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]},
    ]
    assert "```json\n{\"city\":\"Paris\"}\n```" in tmpl.render(msgs)


def test_tools_rendered_and_dropped_for_tool_choice_none(qwen3: ChatTemplate) -> None:
    with_tools = qwen3.render(CONVERSATION, tools=[WEATHER_TOOL], tool_choice="auto")
    assert "# Tools" in with_tools
    assert json.dumps(WEATHER_TOOL) in with_tools  # HF tojson: json.dumps spacing, no HTML escaping
    assert qwen3.render(CONVERSATION, tools=[WEATHER_TOOL], tool_choice="none") == QWEN3_EXPECTED
    keep = ChatTemplate(qwen3.templates["default"], exclude_tools_when_tool_choice_none=False)
    assert "# Tools" in keep.render(CONVERSATION, tools=[WEATHER_TOOL], tool_choice="none")


def test_tojson_html_escaping_option(qwen3: ChatTemplate) -> None:
    escaped = ChatTemplate(qwen3.templates["default"], escape_html=True)
    text = escaped.render(CONVERSATION, tools=[WEATHER_TOOL])
    assert "Weather for a \\u003ccity\\u003e \\u0026 region" in text
    assert "<city>" not in text


def test_tojson_indent() -> None:
    tmpl = ChatTemplate("{{ messages[0] | tojson(indent=2) }}")
    assert tmpl.render([{"role": "user", "content": "x"}]) == '{\n  "role": "user",\n  "content": "x"\n}'


def test_named_templates_default_and_tool_use() -> None:
    tmpl = ChatTemplate([
        {"name": "default", "template": "D:{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T:{{ tools[0].function.name }}"},
    ])
    assert tmpl.render([{"role": "user", "content": "hi"}]) == "D:hi"
    assert tmpl.render([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]) == "T:get_weather"
    # tool_choice none drops tools, so the default template is used
    assert tmpl.render([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], tool_choice="none") == "D:hi"


def test_content_parts_flattened_for_string_templates(qwen3: ChatTemplate) -> None:
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"},
                                     {"type": "image_url", "image_url": {"url": "http://x"}}]},
    ]
    assert not qwen3.requires_content_arrays
    assert qwen3.render(msgs) == QWEN3_EXPECTED


def test_array_only_template_gets_arrays() -> None:
    src = "{% for m in messages %}{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endfor %}"
    tmpl = ChatTemplate(src)
    assert tmpl.requires_content_arrays
    assert tmpl.render([{"role": "user", "content": "hello"}]) == "[hello]"


def test_raise_exception_becomes_template_error() -> None:
    src = (DATA / "chat_templates" / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
    tmpl = ChatTemplate(src, bos_token="<s>")
    with pytest.raises(ChatTemplateError, match="alternate"):
        tmpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_strftime_now_and_not_cached() -> None:
    src = (DATA / "chat_templates" / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")
    tmpl = ChatTemplate(src, bos_token="<|begin_of_text|>")
    text = tmpl.render(CONVERSATION)
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in text
    assert not tmpl._cacheable


def test_generation_tags_stripped_and_length_of_none() -> None:
    src = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}|{{ missing|length }}"
    assert ChatTemplate(src).render([{"role": "user", "content": "x"}]) == "x|0"


def test_context_tokens_and_kwargs_precedence() -> None:
    tmpl = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ add_generation_prompt }}|{{ date_string }}",
                        bos_token="<s>", eos_token="</s>", unk_token="<unk>", extra_context={"date_string": "D1"})
    msgs = [{"role": "user", "content": "x"}]
    assert tmpl.render(msgs) == "<s>|</s>|<unk>|True|D1"
    assert tmpl.render(msgs, chat_template_kwargs={"date_string": "D2", "bos_token": "B"}) == "B|</s>|<unk>|True|D2"


def test_reasoning_content_inlined_when_template_ignores_it() -> None:
    tmpl = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "r"}]
    assert tmpl.render(msgs) == "user:q;assistant:<think>r</think>a;"


def test_render_cache_hits_are_identical(qwen3: ChatTemplate) -> None:
    a = qwen3.render(CONVERSATION)
    b = qwen3.render([dict(m) for m in CONVERSATION])
    assert a == b == QWEN3_EXPECTED
    assert len(qwen3.render_cache) and qwen3.render_cache.hits >= 1  # memoised


def test_sandbox_blocks_unsafe_access() -> None:
    tmpl = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        tmpl.render([{"role": "user", "content": "x"}])
    mutating = ChatTemplate("{% set l = [] %}{{ l.append(1) }}")
    with pytest.raises(ChatTemplateError):
        mutating.render([{"role": "user", "content": "x"}])


def test_custom_template_path_overrides(tmp_path: Path) -> None:
    custom = tmp_path / "custom.jinja"
    custom.write_text("CUSTOM {{ messages[-1].content }}{% if add_generation_prompt %}>{% endif %}", encoding="utf-8")
    tmpl = ChatTemplate.from_model_dir(QWEN3, custom_template_path=custom)
    assert tmpl is not None
    assert tmpl.render(CONVERSATION) == "CUSTOM What is the capital of France?>"
    assert load_template_source(QWEN3) == (DATA / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")


def test_model_without_template_and_chat_template_jinja(tmp_path: Path) -> None:
    assert ChatTemplate.from_model_dir(DATA / "models" / "TinyLlama_v1.1") is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}), encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text("J{{ eos_token }}", encoding="utf-8")
    tmpl = ChatTemplate.from_model_dir(tmp_path)
    assert tmpl is not None and tmpl.render([{"role": "user", "content": "x"}]) == "J</s>"


def test_deepseek_r1_generation_prompt_opens_think() -> None:
    src = (DATA / "chat_templates" / "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja").read_text(encoding="utf-8")
    text = ChatTemplate(src, bos_token="<｜begin▁of▁sentence｜>").render(CONVERSATION)
    assert re.fullmatch(r"<｜begin▁of▁sentence｜>You are a helpful assistant\.<｜User｜>What is the capital of "
                        r"France\?<｜Assistant｜><think>\n", text)
