"""Assemble and run a frontend: runtime + model discovery + HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import uvicorn

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.http.app import FrontendApp
from dynamo.frontend.load_watcher import LoadWatcher
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.pipeline import ModelEngine, PipelineOptions
from dynamo.frontend.process_group import bind_reuse_port
from dynamo.kv_router.conditional_disagg import ConditionalDisaggConfig
from dynamo.llm.busy import BusyThresholds
from dynamo.llm.model_manager import ModelManager, WorkerSet
from dynamo.llm.prefill_router import PrefillPool, PrefillRouter
from dynamo.runtime import DistributedRuntime

logger = logging.getLogger("dynamo.frontend")


@dataclass
class Frontend:
    runtime: DistributedRuntime
    manager: ModelManager
    metrics: FrontendMetrics
    app: FrontendApp
    loads: LoadWatcher

    async def close(self) -> None:
        await self.loads.close()
        await self.manager.close()


async def build_frontend(config: FrontendConfig, runtime: DistributedRuntime) -> Frontend:
    metrics = FrontendMetrics(config.metrics_prefix)
    thresholds = BusyThresholds(config.active_decode_blocks_threshold, config.active_prefill_tokens_threshold,
                                config.active_prefill_tokens_threshold_frac)
    options = PipelineOptions(
        busy=thresholds,
        router_mode=config.router_mode,
        migration_limit=config.migration_limit,
        migration_max_seq_len=config.migration_max_seq_len,
        stream_stall_timeout=config.stream_stall_timeout,
        kv_router=config.kv_router,
        kv_cache_block_size=config.kv_cache_block_size,
        enforce_disagg=config.enforce_disagg,
        conditional_disagg=config.conditional_disagg,
    )

    loads: LoadWatcher | None = None

    def prefill_pool(ws: WorkerSet) -> Callable[[], PrefillPool | None]:
        def lookup() -> PrefillPool | None:
            found = manager.prefill_set(ws)
            return found.engine if found is not None and isinstance(found.engine, PrefillPool) else None

        return lookup

    async def engine_factory(ws: WorkerSet) -> ModelEngine | PrefillPool:
        if ws.prefill:
            return await PrefillPool.build(ws, config.router_mode, config.kv_router, config.kv_cache_block_size,
                                           metrics.router_metrics() if config.router_mode == "kv" else None)
        opts = options
        if loads is not None and ws.model in loads.per_model:
            opts = PipelineOptions(**{**options.__dict__, "busy": loads.per_model[ws.model]})
        engine = await ModelEngine.build(ws, metrics, opts, custom_template=config.custom_jinja_template)
        engine.prefill = PrefillRouter(ws.model, prefill_pool(ws), enforce=config.enforce_disagg,
                                       conditional=config.conditional_disagg or ConditionalDisaggConfig(), metrics=metrics.prefill_metrics(ws.model))
        return engine

    manager = ModelManager(runtime, engine_factory, namespace=config.model_filter_namespace)

    def update_model_gauges() -> None:
        for name, sets in manager.sets.items():
            metrics.model_workers.labels(name).set(sum(len(ws.instances) for ws in sets.values()))

    manager.on_change.append(update_model_gauges)
    loads = LoadWatcher(runtime, manager, metrics, thresholds)
    manager.on_change.append(loads.on_models_changed)
    app = FrontendApp(manager, metrics, busy=loads, admin_token=config.admin_token,
                      direct_routing=config.direct_routing_allowed)
    await manager.start()
    return Frontend(runtime, manager, metrics, app, loads)


def graceful_shutdown_s() -> float:
    """Seconds in-flight requests get to finish after SIGTERM."""
    return float(os.environ.get("DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", "5"))


async def serve_http(config: FrontendConfig, frontend: Frontend) -> None:
    uv_config = uvicorn.Config(
        frontend.app,
        host=config.http_host,
        port=config.http_port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        ssl_certfile=config.tls_cert_path,
        ssl_keyfile=config.tls_key_path,
        timeout_graceful_shutdown=graceful_shutdown_s(),
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(uv_config)
    scheme = "https" if config.tls_cert_path else "http"
    host = "localhost" if config.http_host in ("0.0.0.0", "::") else config.http_host

    async def announce() -> None:
        while not server.started:  # noqa: ASYNC110  (uvicorn exposes no "started" event)
            await asyncio.sleep(0.05)
        port = config.http_port
        with contextlib.suppress(Exception):
            port = server.servers[0].sockets[0].getsockname()[1]
        worker = os.environ.get("DYN_FRONTEND_WORKER_INDEX")
        logger.info("OpenAI-compatible API listening on %s://%s:%d/v1 (models: %s)%s", scheme, host, port,
                    ", ".join(frontend.manager.model_names()) or "none yet; waiting for workers",
                    f" [worker {worker}, pid {os.getpid()}]" if worker is not None else "")

    # SO_REUSEPORT: this process is one of several sharing the port (--num-workers); uvicorn has no
    # option for it, so the socket is bound here and handed over.
    sockets = [bind_reuse_port(config.http_host, config.http_port)] if config.http_reuse_port else None
    announcer = asyncio.get_running_loop().create_task(announce())
    try:
        await server.serve(sockets=sockets)
    finally:
        announcer.cancel()
        for sock in sockets or ():
            sock.close()


@contextlib.asynccontextmanager
async def serve_grpc(config: FrontendConfig, frontend: Frontend) -> AsyncIterator[None]:
    """Run the KServe gRPC server (and its metrics port) for the duration of the block, when enabled."""
    if not config.kserve_grpc_server:
        yield
        return
    from dynamo.frontend.grpc.metrics_server import start_metrics_server
    from dynamo.frontend.grpc.service import start_grpc_server

    server, port = await start_grpc_server(frontend.manager, frontend.metrics, config.http_host, config.grpc_port)
    metrics_server = None
    try:
        if config.grpc_metrics_port:
            metrics_server = await start_metrics_server(frontend.metrics, config.http_host, config.grpc_metrics_port)
        logger.info("KServe gRPC listening on %s:%d", config.http_host, port)
        yield
    finally:
        if metrics_server is not None:
            metrics_server.close()
        # In-flight calls get the same grace as HTTP requests.
        await server.stop(graceful_shutdown_s())
