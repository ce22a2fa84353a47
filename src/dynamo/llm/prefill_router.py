"""Disaggregated serving in the frontend (reference §5): send a request's prefill to a prefill worker,
then its decode to a decode worker with what the prefill produced.

A :class:`PrefillPool` routes over one prefill worker set (a KV router in kv mode, with active-block
tracking off as the reference does, else the frontend's router mode). A :class:`PrefillRouter` belongs
to a decode worker set; per request it finds its namespace's prefill pool (so disaggregation turns on
when the first prefill worker registers and off when the last one leaves) and returns the decode
request:

- no prefill workers: the request unchanged (aggregated), or 503 with ``--enforce-disagg``;
- conditional disaggregation says a remote prefill would not pay: unchanged, prefilled locally;
- the chosen prefill worker advertises a bootstrap endpoint: the bootstrap path. The prefill request is
  dispatched, drained in the background (not tied to the client: a disconnect cannot orphan a KV
  transfer) and the decode request carries the same ``bootstrap_info``;
- otherwise the synchronous path: the prefill stream is awaited and its ``disaggregated_params`` go
  into the decode request's ``prefill_result``.

A prefill worker lost before it answers costs the client nothing: the prefill is retried on another
prefill worker, and with none left the request runs aggregated (unless disaggregation is enforced).
The decode leg is routed with overlap weight 0 and no assumed KV reuse: its prompt KV arrives from the
prefill worker, so the decode workers' caches say nothing about where it is cheapest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dynamo.kv_router.conditional_disagg import ConditionalDisaggConfig, DisaggView, prefill_locally
from dynamo.llm.model_manager import WorkerSet
from dynamo.llm.protocols.engine import (
    BootstrapInfo,
    PrefillResult,
    PreprocessedRequest,
    RouterConfigOverride,
)
from dynamo.llm.push_router import PushRouter
from dynamo.runtime import errors

logger = logging.getLogger(__name__)

DECODE_OVERRIDE = RouterConfigOverride(overlap_score_weight=0.0, assume_kv_reuse=False, track_prefill_tokens=False)


class PrefillPool:
    """The router over one namespace's prefill workers of one model."""

    def __init__(self, ws: WorkerSet, router: Any) -> None:
        self.ws = ws
        self.router = router

    @classmethod
    async def build(cls, ws: WorkerSet, router_mode: str, kv_config: Any = None, block_size: int | None = None,
                    metrics: Any = None) -> PrefillPool:
        assert ws.client is not None
        if router_mode == "kv":
            from dynamo.kv_router.config import KvRouterConfig
            from dynamo.kv_router.router import KvRouter

            cfg = kv_config or KvRouterConfig()
            # A prefill worker frees a request's blocks once its one token is out: only its pending
            # prefill tokens are load worth tracking.
            cfg = dataclasses.replace(cfg, router_track_active_blocks=False, router_track_output_blocks=False)
            router: Any = KvRouter(ws.client, block_size or ws.card.kv_cache_block_size, cfg, model=ws.model,
                                   eligible=lambda: ws.instances,
                                   runtime_config=lambda wid: ws.runtime_configs.get(wid),
                                   metrics=metrics)
            ns, comp, _ = ws.endpoint
            await router.start_events(ws.client.endpoint.runtime, ns, comp)
        else:
            mode = "round-robin" if router_mode == "direct" else router_mode
            router = PushRouter(ws.client, mode, eligible=lambda: ws.instances)
        logger.info("prefill router active for model %r in namespace %s (%s routing)", ws.model, ws.namespace,
                    router_mode)
        return cls(ws, router)

    async def close(self) -> None:
        logger.info("prefill router for model %r in namespace %s deactivated (no prefill workers left)",
                    self.ws.model, self.ws.namespace)
        close = getattr(self.router, "close", None)
        if close is not None:
            await close()

    def select(self, request: PreprocessedRequest, exclude: set[int]) -> tuple[int, int | None]:
        """``(worker_id, overlap_blocks)`` the pool would use now (overlap None outside kv mode)."""
        router = self.router
        if isinstance(router, PushRouter):
            return router.select(exclude), None
        lora = request.routing.lora_name if request.routing is not None else None
        sel, _, _ = router.decide(request.token_ids, lora, exclude=exclude)
        return sel.worker_id, sel.overlap_blocks

    def active_tokens(self, worker_id: int) -> int | None:
        seqs = getattr(self.router, "sequences", None)
        if seqs is None:
            return None
        return sum(v for (wid, _), v in seqs.active_prefill_tokens().items() if wid == worker_id)


@dataclass(slots=True)
class PrefillOutcome:
    """How one request's prefill was served; part of the ``x-dynamo-routing`` explanation."""

    mode: str  # "remote" | "local" | "aggregated"
    reason: str = ""
    worker_id: int | None = None
    path: str | None = None  # "bootstrap" | "synchronous" for remote prefills
    overlap_blocks: int | None = None
    retries: int = 0
    prefill_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        for key in ("worker_id", "path", "overlap_blocks", "reason"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = value
        if self.retries:
            out["retries"] = self.retries
        if self.prefill_ms is not None:
            out["prefill_ms"] = round(self.prefill_ms, 3)
        return out


@dataclass(slots=True)
class DisaggDecision:
    """The routing explanation of a disaggregated request: the decode choice plus its prefill."""

    prefill: PrefillOutcome
    decode_worker_id: int
    decode: Any = None  # the decode KV router's RoutingDecision, when it made one

    def to_dict(self) -> dict[str, Any]:
        out = self.decode.to_dict() if self.decode is not None else {"worker_id": self.decode_worker_id}
        out["prefill"] = self.prefill.to_dict()
        return out


@dataclass
class PrefillMetrics:
    """Counters the frontend exports (``dynamo_frontend_disagg_*``); plain callables keep this module
    free of Prometheus."""

    on_outcome: Callable[[PrefillOutcome], None] = lambda _o: None
    on_retry: Callable[[str], None] = lambda _why: None


@dataclass
class PrefillRouter:
    model: str
    pool: Callable[[], PrefillPool | None]
    enforce: bool = False
    conditional: ConditionalDisaggConfig = field(default_factory=ConditionalDisaggConfig)
    metrics: PrefillMetrics = field(default_factory=PrefillMetrics)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def engaged(self) -> bool:
        """Whether requests go through :meth:`route` (prefill workers exist, or disaggregation is enforced)."""
        return self.enforce or self.pool() is not None

    async def route(self, request: PreprocessedRequest, headers: dict[str, str] | None, decode_router: Any,
                    prefill_instance_id: int | None = None) -> tuple[PreprocessedRequest, PrefillOutcome]:
        pool = self.pool()
        if pool is None:
            if self.enforce:
                raise errors.Unavailable(f"model '{self.model}' is temporarily unavailable: no prefill workers "
                                         "(disaggregation is enforced)")
            if prefill_instance_id is not None:
                raise errors.NotFound(f"prefill worker instance {prefill_instance_id} is not available")
            return self._done(request, PrefillOutcome("aggregated", "no prefill workers"))
        if self.conditional.enabled and prefill_instance_id is None:
            local, why = self._prefill_locally(request, pool, decode_router)
            if local:
                return self._done(request, PrefillOutcome("local", why))
        tried: set[int] = set()
        while True:
            try:
                if prefill_instance_id is not None:
                    if prefill_instance_id not in pool.ws.instances:
                        raise errors.NotFound(f"prefill worker instance {prefill_instance_id} is not available")
                    wid, overlap = prefill_instance_id, None
                else:
                    wid, overlap = pool.select(request, tried)
                out = await self._remote(request, headers, pool, wid, overlap)
                out[1].retries = len(tried)
                return out
            except errors.DynamoError as exc:
                if prefill_instance_id is not None or not _lost_worker(exc):
                    raise
                if isinstance(exc, errors.Unavailable) and not tried:
                    pass  # every prefill worker vanished between lookup and choice
                elif not isinstance(exc, errors.Unavailable):
                    tried.add(wid)
                    self.metrics.on_retry(type(exc).__name__)
                    logger.warning("request %s: prefill worker %x lost (%s); retrying the prefill elsewhere",
                                   request.request_id, wid, exc)
                    if set(pool.ws.instances) - tried:
                        continue
                if self.enforce:
                    raise errors.Unavailable(f"model '{self.model}' is temporarily unavailable: no prefill "
                                             "worker could take the request (disaggregation is enforced)") from exc
                outcome = PrefillOutcome("aggregated", "every prefill worker failed", retries=len(tried))
                return self._done(request, outcome)

    def query(self, request: PreprocessedRequest, decode_router: Any) -> dict[str, Any]:
        """The prefill choice :meth:`route` would make now, without dispatching anything."""
        pool = self.pool()
        if pool is None:
            return {"prefill_worker_id": None, "prefill": {"mode": "aggregated", "reason": "no prefill workers"}}
        if self.conditional.enabled:
            local, why = self._prefill_locally(request, pool, decode_router)
            if local:
                return {"prefill_worker_id": None, "prefill": {"mode": "local", "reason": why}}
        wid, overlap = pool.select(request, set())
        info: dict[str, Any] = {"mode": "remote", "worker_id": wid}
        if overlap is not None:
            info["overlap_blocks"] = overlap
        return {"prefill_worker_id": wid, "prefill": info}

    def _done(self, request: PreprocessedRequest, outcome: PrefillOutcome,
              ) -> tuple[PreprocessedRequest, PrefillOutcome]:
        self.metrics.on_outcome(outcome)
        return request, outcome

    async def _remote(self, request: PreprocessedRequest, headers: dict[str, str] | None, pool: PrefillPool,
                      wid: int, overlap: int | None) -> tuple[PreprocessedRequest, PrefillOutcome]:
        sc = msgspec.structs.replace(request.stop_conditions, max_tokens=1, min_tokens=None)
        prefill_req = msgspec.structs.replace(request, stop_conditions=sc)
        rc = pool.ws.runtime_configs.get(wid)
        boot = rc.disaggregated_endpoint if rc is not None else None
        if boot is not None:
            info = BootstrapInfo(boot.bootstrap_host, boot.bootstrap_port, random.getrandbits(63))
            prefill_req = msgspec.structs.replace(prefill_req, bootstrap_info=info)
            _, stream = await pool.router.generate(prefill_req, headers, wid)
            task = asyncio.get_running_loop().create_task(_drain(stream, request.request_id, wid))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            decode = msgspec.structs.replace(request, bootstrap_info=info, router_config_override=DECODE_OVERRIDE)
            outcome = PrefillOutcome("remote", worker_id=wid, path="bootstrap", overlap_blocks=overlap)
            self.metrics.on_outcome(outcome)
            return decode, outcome
        t0 = time.perf_counter()
        _, stream = await pool.router.generate(prefill_req, headers, wid)
        params: Any = None
        cached: int | None = None
        try:
            async for out in stream:
                if out.disaggregated_params is not None:
                    params = out.disaggregated_params
                if out.completion_usage is not None and out.completion_usage.cached_tokens is not None:
                    cached = out.completion_usage.cached_tokens
                if out.finish_reason == "error":
                    raise errors.Internal(f"prefill worker {wid:x} failed the prefill")
        finally:
            await stream.aclose()
        elapsed = (time.perf_counter() - t0) * 1000
        decode = msgspec.structs.replace(request, prefill_result=PrefillResult(params, cached),
                                         router_config_override=DECODE_OVERRIDE)
        outcome = PrefillOutcome("remote", worker_id=wid, path="synchronous", overlap_blocks=overlap,
                                 prefill_ms=elapsed)
        self.metrics.on_outcome(outcome)
        return decode, outcome

    def _prefill_locally(self, request: PreprocessedRequest, pool: PrefillPool, decode_router: Any,
                         ) -> tuple[bool, str]:
        """Peek both routers (no booking) and apply the conditional-disaggregation policy."""
        cfg = self.conditional
        lora = request.routing.lora_name if request.routing is not None else None
        view = DisaggView(prompt_tokens=len(request.token_ids), block_size=getattr(decode_router, "block_size", 1))
        decide = getattr(decode_router, "decide", None)
        try:
            if decide is not None:
                sel, _, _ = decide(request.token_ids, lora)
                view.decode_overlap_blocks = sel.overlap_blocks
                chosen = next((c for c in sel.candidates if c.worker_id == sel.worker_id
                               and c.dp_rank == sel.dp_rank), None)
                rc = decode_router._runtime_config(sel.worker_id)
                if chosen is not None and rc is not None and rc.total_kv_blocks:
                    view.decode_projected_blocks = chosen.decode_blocks
                    view.decode_total_blocks = rc.total_kv_blocks
            if cfg.policy != "isl_bounding":
                pwid, _ = pool.select(request, set())
                view.prefill_active_tokens = pool.active_tokens(pwid)
                prc = pool.ws.runtime_configs.get(pwid)
                view.prefill_max_batched_tokens = prc.max_num_batched_tokens if prc is not None else None
        except errors.DynamoError:
            return False, "routers could not be peeked"
        return prefill_locally(cfg, view)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _lost_worker(exc: errors.DynamoError) -> bool:
    """Errors after which another prefill worker (or a local prefill) can still serve the request."""
    return exc.migratable or isinstance(exc, (errors.Unavailable, errors.NotFound, errors.CannotConnect))


async def _drain(stream: Any, request_id: str | None, wid: int) -> None:
    """Run a bootstrap-path prefill to its end. Its decode worker waits on the bootstrap room, and falls
    back to a local prefill if this fails, so a failure here is only logged."""
    try:
        async for _ in stream:
            pass
    except errors.DynamoError as exc:
        logger.warning("request %s: bootstrap prefill on worker %x failed (%s); the decode worker prefills "
                       "locally", request_id, wid, exc)
    finally:
        await stream.aclose()
