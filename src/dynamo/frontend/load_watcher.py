"""Feeds worker load reports (``kv_metrics`` on the event plane) into each model's busy monitor, and
serves ``/busy_threshold``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dynamo.frontend.http.errors import HttpError
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.kv_router.protocols import ActiveLoad
from dynamo.llm.busy import BusyThresholds
from dynamo.llm.model_manager import ModelManager
from dynamo.runtime import errors
from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger(__name__)

_FIELDS = ("active_decode_blocks_threshold", "active_prefill_tokens_threshold",
           "active_prefill_tokens_threshold_frac")


class LoadWatcher:
    def __init__(self, runtime: DistributedRuntime, manager: ModelManager, metrics: FrontendMetrics,
                 defaults: BusyThresholds) -> None:
        self.runtime = runtime
        self.manager = manager
        self.metrics = metrics
        self.defaults = defaults
        self.per_model: dict[str, BusyThresholds] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._subs: dict[str, Any] = {}
        # Workers of some worker set; reports from any other id (a removed worker's last words) are
        # dropped so they cannot re-create its series or busy state.
        self._live: set[int] = set()
        self._labelled: dict[int, set[int]] = {}  # worker id -> dp ranks with metric series
        self._closing: set[asyncio.Task[Any]] = set()

    def thresholds_for(self, model: str) -> BusyThresholds:
        return self.per_model.get(model, self.defaults)

    def on_models_changed(self) -> None:
        sets = self.manager.all_sets()
        for ws in sets:
            if ws.namespace not in self._tasks:
                self._tasks[ws.namespace] = asyncio.get_running_loop().create_task(self._follow(ws.namespace))
            if ws.engine is not None and not ws.prefill:
                ws.engine.monitor.retain(ws.instances)
        self._live = {iid for ws in sets for iid in ws.instances}
        for wid in [w for w in self._labelled if w not in self._live]:
            self._drop_series(wid)
        # A namespace whose last worker set is gone needs no subscription any more.
        namespaces = {ws.namespace for ws in sets}
        for ns in [n for n in self._tasks if n not in namespaces]:
            self._tasks.pop(ns).cancel()
            sub = self._subs.pop(ns, None)
            if sub is not None:
                task = asyncio.get_running_loop().create_task(sub.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                task.add_done_callback(_log_close_error)

    def _drop_series(self, worker_id: int) -> None:
        m = self.metrics
        for rank in self._labelled.pop(worker_id, ()):
            for gauge in (m.worker_kv_used_blocks, m.worker_active_decode_blocks, m.worker_active_prefill_tokens):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(worker_id), str(rank))

    async def _follow(self, namespace: str) -> None:
        try:
            sub = await self.runtime.namespace(namespace).subscribe("kv_metrics")
        except Exception as exc:
            logger.warning("cannot subscribe to kv_metrics in %s (%s): busy detection uses router state only",
                           namespace, exc)
            return
        self._subs[namespace] = sub
        async for env in sub:
            try:
                load = env.decode(ActiveLoad)
            except Exception:
                continue
            self.apply(load)

    def apply(self, load: ActiveLoad) -> None:
        if load.worker_id not in self._live:
            return
        self._labelled.setdefault(load.worker_id, set()).add(load.dp_rank)
        wid, rank = str(load.worker_id), str(load.dp_rank)
        if load.kv_used_blocks is not None:
            self.metrics.worker_kv_used_blocks.labels(wid, rank).set(load.kv_used_blocks)
        if load.active_decode_blocks is not None:
            self.metrics.worker_active_decode_blocks.labels(wid, rank).set(load.active_decode_blocks)
        if load.active_prefill_tokens is not None:
            self.metrics.worker_active_prefill_tokens.labels(wid, rank).set(load.active_prefill_tokens)
        for ws in self.manager.all_sets():
            if load.worker_id in ws.instances and ws.engine is not None and not ws.prefill:
                ws.engine.observe_load(load)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.close()

    # -- /busy_threshold -------------------------------------------------------------------------

    def all_thresholds(self) -> list[dict[str, Any]]:
        return [{"model": m, **self.thresholds_for(m).to_dict()} for m in self.manager.model_names()]

    def update(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body["model"]
        if model not in self.manager.model_names():
            # Unknown names would otherwise each grow ``per_model`` for good.
            raise errors.NotFound(f"model '{model}' not found")
        current = self.thresholds_for(model)
        given = {k: body[k] for k in _FIELDS if k in body}
        if given:
            values = current.to_dict()
            for key, value in given.items():
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                          or value < 0):
                    raise HttpError(400, f"{key} must be a non-negative number or null", key)
                values[key] = value
            if values["active_prefill_tokens_threshold"] is not None:
                values["active_prefill_tokens_threshold"] = int(values["active_prefill_tokens_threshold"])
            current = BusyThresholds(**values)  # type: ignore[arg-type]
            self.per_model[model] = current
            for ws in self.manager.all_sets():
                if ws.model == model and ws.engine is not None and not ws.prefill:
                    ws.engine.monitor.set_thresholds(current)
        return {"model": model, **current.to_dict()}


def _log_close_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("closing a kv_metrics subscription failed: %s", task.exception())
