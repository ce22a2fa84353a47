"""Forwarding: choose a pool for each request, stream the pool router's answer back, retry faster pools.

Requests and responses pass through as plain dicts (msgpack maps), so fields this process does not
know survive the hop unchanged. The handler adds two things on the way back:

* the **routing explanation**: the first item of every response carries
  ``extra_args["routing"] = {"global_router": {"mode": ..., "pools": [...]}}`` naming the pool(s)
  that served it; the frontend folds it into ``x-dynamo-routing`` (and ``nvext.routing`` of a unary
  response).
* in disaggregated mode the prefill result's ``disaggregated_params`` is wrapped as
  ``{MARKER: {"prefill": <prefill pool explanation>, "params": <original>}}``. The frontend hands it
  back unchanged in the decode request's ``prefill_result``; the decode handler unwraps it (the decode
  worker sees the original) and reports both pools.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from dynamo.global_router.metrics import GlobalRouterMetrics
from dynamo.global_router.pool_selection import Choice, GlobalRouterConfig, PoolKind
from dynamo.runtime import errors
from dynamo.runtime.client import Client
from dynamo.runtime.context import RequestContext

logger = logging.getLogger("dynamo.global_router")

#: key of the wrapper the prefill handler puts around ``disaggregated_params``
MARKER = "dynamo_global_router"

#: errors that say the request itself (not the pool) is at fault, or that the client left: no retry
_NO_RETRY = (errors.InvalidArgument, errors.Cancelled)
#: errors kept as they are when they end a request (they already map to the right status)
_KEEP = (errors.InvalidArgument, errors.Cancelled, errors.ResourceExhausted)


class Outcome(str, enum.Enum):
    """How one pool's attempt at a request ended (the ``status`` label of the request counter)."""

    SUCCESS = "success"
    ERROR = "error"
    #: failed before its first item; the request moved on to a faster pool
    RETRIED = "retried"
    #: the caller left before the pool finished
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SlaDefaults:
    """``--default-ttft-target-ms`` / ``--default-itl-target-ms``: used when a request names no target."""

    ttft_ms: float | None = None
    itl_ms: float | None = None


@dataclass
class _Target:
    value: float | None
    #: "request", "default" or "midpoint" (the grid's own midpoint, when neither names one)
    source: str


class GlobalRouterHandler:
    """Serves the global router's endpoints; one method per pool kind.

    ``clients[kind][i]`` is the client of ``{namespace_i}.router.generate`` for the pools of ``kind``.
    Each method is an endpoint handler: ``(request dict, ctx) -> async iterator of response dicts``.
    A pool that fails before its first item is followed by the faster pools when priority retry is on;
    when none is left the request fails with ``Unavailable`` (HTTP 503) naming the pool and the cause.
    Once items have streamed a failure is passed on as it is (a migratable one lets the frontend
    migrate the request).
    """

    def __init__(self, config: GlobalRouterConfig, clients: dict[PoolKind, list[Client]],
                 defaults: SlaDefaults | None = None, metrics: GlobalRouterMetrics | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.clients = clients
        self.defaults = defaults or SlaDefaults()
        self.metrics = metrics or GlobalRouterMetrics()
        self._clock = clock

    # -- endpoints ------------------------------------------------------------------------------

    async def prefill(self, request: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        isl = _token_count(request)
        ttft = self._target(request, "ttft_target", self.defaults.ttft_ms)
        route = self._choose(PoolKind.PREFILL, request, [isl, ttft.value])
        async for item in self._forward(route, request, ctx, ttft=ttft, itl=None):
            if isinstance(item, dict) and item.get("disaggregated_params") is not None:
                item["disaggregated_params"] = {MARKER: {"prefill": route.explanation,
                                                        "params": item["disaggregated_params"]}}
            yield item

    async def decode(self, request: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        context_length = _token_count(request)
        prefill_explained = _unwrap_prefill(request)
        itl = self._target(request, "itl_target", self.defaults.itl_ms)
        route = self._choose(PoolKind.DECODE, request, [context_length, itl.value])
        if prefill_explained is not None:
            route.before.append(prefill_explained)
        async for item in self._forward(route, request, ctx, ttft=None, itl=itl):
            yield item

    async def generate(self, request: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        isl = _token_count(request)
        ttft = self._target(request, "ttft_target", self.defaults.ttft_ms)
        itl = self._target(request, "itl_target", self.defaults.itl_ms)
        values: list[float | None] = [ttft.value, itl.value]
        if len(self.config.pool_set(PoolKind.AGG).grid.axes) == 3:
            values.insert(0, isl)
        route = self._choose(PoolKind.AGG, request, values)
        async for item in self._forward(route, request, ctx, ttft=ttft, itl=itl):
            yield item

    # -- choosing -------------------------------------------------------------------------------

    def _target(self, request: dict[str, Any], key: str, default: float | None) -> _Target:
        # The reference reads ``extra_args`` (older) or the typed ``router`` field (newer); accept both.
        for holder in ("extra_args", "router"):
            fields = request.get(holder)
            if isinstance(fields, dict) and fields.get(key) is not None:
                value = fields[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise errors.InvalidArgument(f"{key} must be a number of milliseconds, got {value!r}")
                return _Target(float(value), "request")
        if default is not None:
            return _Target(default, "default")
        return _Target(None, "midpoint")

    def _choose(self, kind: PoolKind, request: dict[str, Any], values: list[float | None]) -> _Route:
        pools = self.config.pool_set(kind)
        priority = _priority(request)
        t0 = self._clock()
        choice = pools.grid.choose(values, priority)
        self.metrics.selection.labels(kind.value).observe(self._clock() - t0)
        order = pools.retry_order(choice.pool, self.config.enable_priority_retry)
        logger.debug("%s request %s: %s -> pool %d (%s); retry order %s", kind.value, request.get("request_id"),
                     choice.inputs, choice.pool, pools.namespaces[choice.pool], order)
        return _Route(self.config.mode.value, kind, pools.namespaces, choice, priority, order)

    # -- forwarding -----------------------------------------------------------------------------

    async def _forward(self, route: _Route, request: dict[str, Any], ctx: RequestContext, *,
                       ttft: _Target | None, itl: _Target | None) -> AsyncIterator[Any]:
        kind = route.kind.value
        headers = {"request-id": ctx.id}
        m = self.metrics
        for attempt, pool in enumerate(route.order):
            ns = route.namespaces[pool]
            last = attempt == len(route.order) - 1
            start = self._clock()
            stream: Any = None
            first_at: float | None = None
            tokens_after_first = 0
            last_at = start
            # The frontend closes the stream as soon as it sees a finish_reason, often before the pool's
            # end frame: a finish_reason counts as a complete request.
            ended = False
            status: Outcome | None = None
            try:
                stream = await self.clients[route.kind][pool].round_robin(request, headers)
                async for item in stream:
                    now = self._clock()
                    n = len(item.get("token_ids") or ()) if isinstance(item, dict) else 0
                    if first_at is None:
                        route.served(pool)
                        if isinstance(item, dict):
                            extra = item.get("extra_args")
                            item["extra_args"] = {**(extra if isinstance(extra, dict) else {}),
                                                  "routing": route.response_explanation()}
                        if n or route.kind is PoolKind.PREFILL:
                            first_at = now
                            tokens_after_first = max(n - 1, 0)
                    else:
                        tokens_after_first += n
                    if n:
                        last_at = now
                    if isinstance(item, dict) and item.get("finish_reason") is not None:
                        ended = True
                    yield item
                ended = True
            except errors.DynamoError as exc:
                if route.served_pool is not None:
                    status = Outcome.ERROR
                    raise
                if isinstance(exc, _NO_RETRY) or last:
                    status = Outcome.ERROR
                    if isinstance(exc, _KEEP):
                        raise
                    raise errors.Unavailable(
                        f"{kind} pool {pool} ({ns}) cannot serve the request: {exc}") from exc
                status = Outcome.RETRIED
                nxt = route.order[attempt + 1]
                logger.warning("%s pool %d (%s) failed before streaming (%s); retrying faster pool %d (%s)",
                               kind, pool, ns, exc, nxt, route.namespaces[nxt])
                m.retries.labels(kind, ns, route.namespaces[nxt]).inc()
                route.failed.append({"pool": pool, "namespace": ns, "error": type(exc).__name__})
                continue
            finally:
                if stream is not None and not getattr(stream, "_done", True):
                    # The client left (or we failed) mid-stream: stop the pool's work too.
                    stream.cancel(kill=True)
                if status is None:
                    status = Outcome.SUCCESS if ended else Outcome.CANCELLED
                m.requests.labels(kind, ns, status.value).inc()
                if status is Outcome.SUCCESS:
                    self._observe(route, ns, start, first_at, last_at, tokens_after_first, ttft, itl)
            return

    def _observe(self, route: _Route, ns: str, start: float, first_at: float | None, last_at: float,
                 tokens_after_first: int, ttft: _Target | None, itl: _Target | None) -> None:
        m = self.metrics
        labels = (route.kind.value, ns)
        if first_at is not None:
            observed = first_at - start
            m.ttft.labels(*labels).observe(observed)
            if ttft is not None and ttft.value is not None:
                m.ttft_target.labels(*labels).observe(ttft.value / 1000)
                if ttft.source != "midpoint" and observed * 1000 > ttft.value:
                    m.sla_misses.labels(*labels, "ttft").inc()
        if first_at is not None and tokens_after_first > 0:
            mean_itl = (last_at - first_at) / tokens_after_first
            m.itl.labels(*labels).observe(mean_itl)
            if itl is not None and itl.value is not None:
                m.itl_target.labels(*labels).observe(itl.value / 1000)
                if itl.source != "midpoint" and mean_itl * 1000 > itl.value:
                    m.sla_misses.labels(*labels, "itl").inc()


class _Route:
    """One request's pool decision and what happened to it, for the explanation."""

    __slots__ = ("before", "choice", "failed", "kind", "mode", "namespaces", "order", "priority", "served_pool")

    def __init__(self, mode: str, kind: PoolKind, namespaces: tuple[str, ...], choice: Choice,
                 priority: int | None, order: list[int]) -> None:
        self.mode = mode
        self.kind = kind
        self.namespaces = namespaces
        self.choice = choice
        self.priority = priority
        self.order = order
        self.failed: list[dict[str, Any]] = []
        self.served_pool: int | None = None
        #: explanations of earlier legs of the same request (the prefill pool, for a decode request)
        self.before: list[dict[str, Any]] = []

    def served(self, pool: int) -> None:
        self.served_pool = pool

    @property
    def explanation(self) -> dict[str, Any]:
        """This leg: pool type, the pool that served it, the grid cell and the values that chose it."""
        pool = self.served_pool if self.served_pool is not None else self.choice.pool
        out: dict[str, Any] = {"type": self.kind.value, "pool": pool, "namespace": self.namespaces[pool],
                               "selected_pool": self.choice.pool, "cell": list(self.choice.cell),
                               "inputs": self.choice.inputs}
        if self.priority is not None:
            out["priority"] = self.priority
        if self.choice.grid_pool is not None:
            out["grid_pool"] = self.choice.grid_pool
        if self.failed:
            out["failed"] = list(self.failed)
        return out

    def response_explanation(self) -> dict[str, Any]:
        return {"global_router": {"mode": self.mode, "pools": [*self.before, self.explanation]}}


def _token_count(request: Any) -> int:
    if not isinstance(request, dict):
        raise errors.InvalidArgument("request must be a PreprocessedRequest map")
    tokens = request.get("token_ids")
    if not isinstance(tokens, list):
        raise errors.InvalidArgument("request.token_ids must be a list of token ids")
    return len(tokens)


def _priority(request: dict[str, Any]) -> int | None:
    routing = request.get("routing")
    if not isinstance(routing, dict):
        return None
    value = routing.get("priority")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgument(f"routing.priority must be an integer, got {value!r}")
    return value


def _unwrap_prefill(request: dict[str, Any]) -> dict[str, Any] | None:
    """Restore the prefill pool's original ``disaggregated_params``; return that leg's explanation."""
    result = request.get("prefill_result")
    if not isinstance(result, dict):
        return None
    params = result.get("disaggregated_params")
    if not isinstance(params, dict) or MARKER not in params:
        return None
    wrapped = params[MARKER]
    if not isinstance(wrapped, dict):
        return None
    result["disaggregated_params"] = wrapped.get("params")
    explained = wrapped.get("prefill")
    return explained if isinstance(explained, dict) else None
