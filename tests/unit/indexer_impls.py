"""Both KV indexer implementations, as pytest params: every indexer test runs against each.

The compiled one is skipped, with the reason, where it was not built (no C compiler on the machine).
"""

from __future__ import annotations

import pytest

from dynamo.kv_router.indexer import PyRadixTree

try:
    from dynamo.kv_router.native_indexer import NativeRadixTree
except ImportError as exc:  # pragma: no cover - only without a compiler
    NativeRadixTree = None  # type: ignore[assignment,misc]
    NATIVE_MISSING = f"compiled KV indexer not built ({exc}); run python -m dynamo.kv_router.native_build"
else:
    NATIVE_MISSING = ""

IMPLS = [
    pytest.param(PyRadixTree, id="python"),
    pytest.param(NativeRadixTree, id="native", marks=pytest.mark.skipif(bool(NATIVE_MISSING), reason=NATIVE_MISSING)),
]
