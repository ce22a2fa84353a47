"""The chat-template render cache is bounded by bytes (llm/preprocessor/render_cache.py)."""

from __future__ import annotations

import pytest

from dynamo.llm.preprocessor.chat_template import ChatTemplate
from dynamo.llm.preprocessor.render_cache import RenderCache

pytestmark = pytest.mark.unit


def test_evicts_by_bytes_not_count() -> None:
    cache = RenderCache(max_bytes=40_000)
    for i in range(3):
        assert cache.put(f"k{i}".encode(), chr(ord("a") + i) * 9_000)
    assert len(cache) == 3 and cache.bytes <= 40_000
    # Two more 9 KB prompts exceed 40 KB: the least recently used go first, whatever the count.
    assert cache.get(b"k0") is not None  # k0 is now the most recent
    cache.put(b"k3", "d" * 9_000)
    cache.put(b"k4", "e" * 9_000)
    assert cache.bytes <= 40_000
    assert cache.get(b"k1") is None
    assert cache.get(b"k0") == "a" * 9_000 and cache.get(b"k4") == "e" * 9_000
    # Many tiny entries fit where few big ones did not.
    for i in range(200):
        cache.put(f"t{i}".encode(), "x")
    assert len(cache) > 100 and cache.bytes <= 40_000


def test_an_entry_over_a_quarter_of_the_budget_is_not_cached() -> None:
    cache = RenderCache(max_bytes=40_000)
    cache.put(b"small", "s")
    assert not cache.put(b"huge", "h" * 11_000)
    assert cache.get(b"huge") is None and cache.get(b"small") == "s"


def test_replacing_a_key_keeps_the_byte_count() -> None:
    cache = RenderCache(max_bytes=40_000)
    cache.put(b"k", "a" * 1000)
    before = cache.bytes
    cache.put(b"k", "a" * 1000)
    assert cache.bytes == before and len(cache) == 1


def test_chat_template_cache_stays_within_its_budget() -> None:
    tmpl = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", render_cache_bytes=64_000)
    for i in range(50):
        tmpl.render([{"role": "user", "content": f"{i}" + "z" * 5_000}])
    assert tmpl.render_cache.bytes <= 64_000
    assert 3 <= len(tmpl.render_cache) < 50
