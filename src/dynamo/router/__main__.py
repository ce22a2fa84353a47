"""Standalone KV router: routes token-level requests to the workers behind ``--endpoint``.

    python -m dynamo.router --endpoint dynamo.backend.generate --block-size 16

Serves ``dyn://{namespace}.router.generate`` (PreprocessedRequest in, LLMEngineOutput items out,
routed with the KV cost function) and ``dyn://{namespace}.router.best_worker_id`` (token ids in,
one ``{"worker_id", "dp_rank", "overlap_blocks"}`` out, no state change).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import msgspec

from dynamo.common import cli
from dynamo.common.configuration import add_argument, dump_config
from dynamo.common.configuration.groups import (
    KvRouterArgGroup,
    RuntimeArgGroup,
    RuntimeConfig,
    kv_router_config,
)
from dynamo.kv_router.router import KvRouter
from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest, merge_outputs
from dynamo.llm.protocols.model_card import RuntimeConfig as CardRuntimeConfig
from dynamo.runtime import DistributedRuntime, RequestContext, errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.naming import EndpointId
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("dynamo.router")

INSTANCE_WAIT_SECS = 5.0


class RouterConfig(RuntimeConfig):
    endpoint: str = ""
    kv_cache_block_size: int = 128
    verbose: int = 0


class BestWorkerRequest(msgspec.Struct):
    token_ids: list[int]
    lora_name: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynamo.router", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    RuntimeArgGroup().add_arguments(p)
    add_argument(p, "--endpoint", "DYN_ROUTER_ENDPOINT", "", "Workers' endpoint, e.g. dynamo.backend.generate.")
    KvRouterArgGroup(block_size_flag="--block-size", block_size_default=128).add_arguments(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return p


async def serve(config: RouterConfig, kv_config: Any, runtime: DistributedRuntime,
                ) -> tuple[KvRouter, asyncio.Task[None]]:
    target = EndpointId.parse(config.endpoint)
    workers = runtime.namespace(target.namespace).component(target.component).endpoint(target.name)
    client = await workers.client(LLMEngineOutput, merge_outputs)
    configs: dict[int, CardRuntimeConfig] = {}

    async def follow_cards() -> None:
        prefix = registry.model_key(target.namespace, target.component, target.name, 0).rsplit("/", 1)[0] + "/"
        watch = await runtime.store.watch(prefix)
        async for ev in watch:
            iid = int(ev.key.rsplit("/", 1)[-1], 16)
            if ev.kind == "put" and ev.value is not None:
                entry = registry.decode_model(ev.value)
                rc = entry.card.get("runtime_config") or {}
                configs[iid] = msgspec.convert(rc, CardRuntimeConfig)
            else:
                configs.pop(iid, None)

    cards_task = asyncio.get_running_loop().create_task(follow_cards())
    # Workers that registered no card still route (with one dp rank), unlike the frontend's stricter view.
    router = KvRouter(client, config.kv_cache_block_size, kv_config,
                      runtime_config=lambda wid: configs.get(wid, CardRuntimeConfig()))
    await router.start_events(runtime, target.namespace, target.component)

    async def ready() -> None:
        # Right after start-up discovery may not have delivered the workers yet: give it a moment.
        if not client.instance_ids():
            await client.wait_for_instances(timeout=INSTANCE_WAIT_SECS)

    async def generate(request: PreprocessedRequest, ctx: RequestContext) -> Any:
        await ready()
        _iid, stream = await router.generate(request, {"request-id": ctx.id})
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def best_worker_id(request: BestWorkerRequest, ctx: RequestContext) -> Any:
        if not request.token_ids:
            raise errors.InvalidArgument("token_ids must not be empty")
        await ready()
        worker_id, dp_rank, overlap = router.best_worker(request.token_ids, request.lora_name)
        yield {"worker_id": worker_id, "dp_rank": dp_rank, "overlap_blocks": overlap}

    component = runtime.namespace(config.namespace).component("router")
    await component.endpoint("generate").start_serving(generate, request_type=PreprocessedRequest)
    await component.endpoint("best_worker_id").start_serving(best_worker_id, request_type=BestWorkerRequest)
    logger.info("KV router for %s serving dyn://%s.router.generate (block size %d)", target.as_url(),
                config.namespace, config.kv_cache_block_size)
    return router, cards_task


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = RouterConfig.from_cli_args(args)
    cli.configure_logging(config.verbose)
    if not config.endpoint:
        parser.error("--endpoint is required (the workers' endpoint, e.g. dynamo.backend.generate)")
    try:
        kv_config = kv_router_config(args)
    except errors.ConfigError as exc:
        parser.error(str(exc))

    async def amain() -> None:
        dump_config(config.dump_config_to, config)
        runtime = await DistributedRuntime.from_settings(config)
        install_signal_handlers(runtime)
        await runtime.start_status_server()
        router, cards_task = await serve(config, kv_config, runtime)
        runtime.add_metrics_registry(router.metrics.registry)
        runtime.health.set_engine_ready()
        await runtime.wait_for_shutdown()
        cards_task.cancel()
        await router.close()

    cli.run(amain)


if __name__ == "__main__":
    main()
