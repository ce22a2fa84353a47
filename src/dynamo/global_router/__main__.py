"""Global router: one model served by several pools, each request sent to the pool its SLA calls for.

    python -m dynamo.global_router --config pools.json --model-name Qwen3-0.6B --model-path PATH

Each pool is a namespace with its own standalone router (``python -m dynamo.router``, serving
``dyn://{pool}.router.generate``) in front of its workers. Disagg mode registers a prefill card
(``{ns}.{component}.prefill_generate``: prompt length x TTFT target picks the prefill pool) and a
chat/completions card (``{ns}.{component}.decode_generate``: request length x ITL target picks the
decode pool); agg mode registers one chat/completions card (``{ns}.{component}.generate``: TTFT x ITL
targets, optionally prompt length). Targets come from the request (``nvext.router.ttft_target`` /
``itl_target``, in ms), else ``--default-*-target-ms``, else the grid's midpoint; priority from
``nvext.agent_hints.priority``. With ``DYN_SYSTEM_PORT`` set, a status server there answers /health, /live and /metrics.
"""

from __future__ import annotations

import asyncio
import logging

from dynamo.common import cli
from dynamo.common.configuration import dump_config
from dynamo.global_router.args import GlobalRouterArgs, build_parser
from dynamo.global_router.handler import GlobalRouterHandler, SlaDefaults
from dynamo.global_router.metrics import GlobalRouterMetrics
from dynamo.global_router.pool_selection import GlobalRouterConfig, Mode, PoolKind
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.client import Client
from dynamo.runtime.errors import ConfigError, Unavailable
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("dynamo.global_router")

#: how long start-up waits for every pool's router to appear before registering anyway
POOL_WAIT_SECS = 10.0


async def connect_pools(runtime: DistributedRuntime, pools: GlobalRouterConfig,
                        wait_secs: float = POOL_WAIT_SECS) -> dict[PoolKind, list[Client]]:
    """One client per pool router; waits (bounded) for each to be discoverable, so that the cards go up
    only once requests can be forwarded. A pool still missing is logged: it is used when it appears."""
    clients: dict[PoolKind, list[Client]] = {}
    for kind, pool_set in pools.pools.items():
        clients[kind] = [await runtime.namespace(ns).component("router").endpoint("generate").client()
                         for ns in pool_set.namespaces]

    async def wait(kind: PoolKind, i: int, client: Client) -> None:
        try:
            await client.wait_for_instances(timeout=wait_secs)
        except Unavailable:
            logger.warning("%s pool %d (%s): no router at %s yet; requests chosen for it fail over or get 503 "
                           "until it appears", kind.value, i, pools.pools[kind].namespaces[i], client.endpoint.url)

    await asyncio.gather(*(wait(kind, i, c) for kind, cs in clients.items() for i, c in enumerate(cs)))
    return clients


async def serve(config: GlobalRouterArgs, pools: GlobalRouterConfig, runtime: DistributedRuntime,
                metrics: GlobalRouterMetrics, pool_wait_secs: float = POOL_WAIT_SECS) -> GlobalRouterHandler:
    clients = await connect_pools(runtime, pools, pool_wait_secs)
    handler = GlobalRouterHandler(pools, clients, SlaDefaults(config.default_ttft_target_ms,
                                                              config.default_itl_target_ms), metrics)
    assert config.model_name is not None
    model_path = config.model_path or config.model_name
    component = runtime.namespace(config.namespace).component(config.component_name)
    serving = config.endpoint_type_list
    if pools.mode is Mode.DISAGG:
        # Two endpoints in the frontend's namespace: its prefill router sends the prefill leg to the
        # first, its decode router the decode leg (with the prefill result) to the second. The prefill
        # card advertises no bootstrap endpoint: the frontend takes the synchronous path.
        legs = (("prefill_generate", handler.prefill, ["prefill"]), ("decode_generate", handler.decode, serving))
    else:
        legs = (("generate", handler.generate, serving),)
    for name, fn, model_type in legs:
        ep = component.endpoint(name)
        card = await asyncio.to_thread(build_card, model_path, config.model_name, model_type=model_type)
        await ep.start_serving(fn)
        await register_llm(ep, card)
        logger.info("serving %s (%s) for model %r", ep.url, ",".join(model_type), config.model_name)
    summary = ", ".join(f"{k.value}: {list(p.namespaces)}" for k, p in pools.pools.items())
    logger.info("global router ready (%s mode; %s; priority retry %s)", pools.mode.value, summary,
                "on" if pools.enable_priority_retry else "off")
    return handler


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = GlobalRouterArgs.from_cli_args(args)
    cli.configure_logging(config.verbose)
    try:
        config.validate()
        pools = config.load_pools()
    except ConfigError as exc:
        cli.fail(str(exc))

    async def amain() -> None:
        dump_config(config.dump_config_to, config)
        metrics = GlobalRouterMetrics()
        runtime = await DistributedRuntime.from_settings(config)
        install_signal_handlers(runtime)
        # DYN_SYSTEM_PORT: /health (ready once the pools are connected and both legs registered), /live,
        # /metrics with the runtime's and the global router's own metrics.
        await runtime.start_status_server()
        runtime.add_metrics_registry(metrics.registry)
        await serve(config, pools, runtime, metrics)
        runtime.health.set_engine_ready()
        await runtime.wait_for_shutdown()

    cli.run(amain)


if __name__ == "__main__":
    main()
