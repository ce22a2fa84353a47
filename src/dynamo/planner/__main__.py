"""Planner: scales prefill/decode worker pools to meet TTFT/ITL targets with as few GPUs as possible.

    python -m dynamo.planner --environment local --mode agg --backend mocker \\
        --local-worker-cmd "python -m dynamo.mocker --model-path ../shared/data/models/Qwen3-0.6B" \\
        --profile-results-dir ../shared/data/dynamo/profiling/H200_TP1P_TP1D_llama3.1-8b-fp8 \\
        --metrics-source frontend --frontend-metrics-url http://localhost:8000/metrics \\
        --load-predictor kalman --adjustment-interval 30
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dynamo.common import cli
from dynamo.common.configuration import dump_config
from dynamo.planner.args import PlannerConfig, build_parser
from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.planner.core import Planner
from dynamo.planner.metrics import PlannerMetrics
from dynamo.planner.perf_interpolation import load_profile
from dynamo.planner.traffic import FrontendScrapeTraffic, PrometheusTraffic, TrafficSource
from dynamo.planner.warmup import bucket, read_trace
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.errors import ConfigError, DynamoError
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("dynamo.planner")


def pool_endpoint(config: PlannerConfig, pool: str) -> str:
    comp = config.prefill_component if pool == "prefill" else config.decode_component
    return f"dyn://{config.namespace}.{comp}.generate"


def build_connector(config: PlannerConfig, runtime: DistributedRuntime) -> Connector:
    if config.environment == "local":
        from dynamo.planner.connectors.local import LocalConnector, Pool, worker_command

        cmds = {"prefill": config.local_prefill_worker_cmd, "decode": config.local_worker_cmd}
        pools = {p: Pool(worker_command(cmds[p] or ""), pool_endpoint(config, p)) for p in config.pools()}
        return LocalConnector(runtime, pools, config.local_drain_timeout)
    if config.environment == "virtual":
        from dynamo.planner.connectors.virtual import VirtualConnector

        return VirtualConnector(runtime.store, config.namespace, config.scaling_max_wait_time)
    from dynamo.planner.connectors.kubernetes import KubernetesConnector

    return KubernetesConnector(component_names={"prefill": config.prefill_component,
                                                "decode": config.decode_component})


def build_traffic(config: PlannerConfig) -> TrafficSource:
    if config.metrics_source == "frontend":
        return FrontendScrapeTraffic(config.frontend_metrics_url, config.metrics_prefix, config.model_name)
    return PrometheusTraffic(config.prometheus_endpoint, config.metrics_prefix, config.model_name)


async def every(seconds: float, step: Any, what: str) -> None:
    """Run ``step`` every ``seconds``; a failed step is logged and the loop goes on."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except DynamoError as exc:
            logger.warning("%s step skipped: %s", what, exc)
        except Exception:
            logger.exception("%s step failed", what)


async def follow_fpm(planner: Planner, runtime: DistributedRuntime, config: PlannerConfig, pool: str) -> None:
    """Feed the pool's forward-pass metrics (event plane) to the load-based scaler, and forget engines
    that left discovery."""
    comp = config.prefill_component if pool == "prefill" else config.decode_component
    sub = await runtime.event_plane().subscriber(config.namespace, comp, "forward-pass-metrics")
    client = await runtime.endpoint(pool_endpoint(config, pool)).client()
    # The client tells listeners before it updates its own id set: leave the removed one out by hand.
    client.on_change(lambda kind, inst: planner.forget_workers(pool, set(client.instance_ids()) - {inst.instance_id})
                     if kind == "removed" else None)
    try:
        async for envelope in sub:
            report = sub.decode(envelope)
            if isinstance(report, dict):
                planner.observe_fpm(pool, report, set(client.instance_ids()))
        if not runtime.is_shutting_down():  # at shutdown the event plane closes first: nothing to report
            logger.error("forward-pass metrics of the %s pool ended: load-based scaling is blind to it", pool)
    except Exception:
        logger.exception("forward-pass metrics of the %s pool failed: load-based scaling is blind to it", pool)
        raise
    finally:
        await sub.close()
        await client.close()


async def serve_metrics(metrics: PlannerMetrics, port: int) -> asyncio.AbstractServer:
    """A minimal ``/metrics`` HTTP endpoint on the planner's event loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            body = metrics.render()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "0.0.0.0", port)


async def run(config: PlannerConfig) -> None:
    config.validate()
    perf = (load_profile(config.profile_results_dir, config.prefill_engine_num_gpu, config.decode_engine_num_gpu)
            if config.enable_throughput_scaling else None)
    warm = (bucket(read_trace(config.load_predictor_warmup_trace), config.adjustment_interval)
            if config.load_predictor_warmup_trace else [])
    dump_config(config.dump_config_to, config)
    runtime = await DistributedRuntime.from_settings(config)
    install_signal_handlers(runtime)
    connector = build_connector(config, runtime)
    traffic = build_traffic(config) if config.enable_throughput_scaling else None
    load_traffic = build_traffic(config) if config.enable_loadbased_scaling and not config.no_correction else None
    metrics = PlannerMetrics()
    planner = Planner(config, connector, traffic, perf, metrics, load_traffic)
    planner.warm_start(warm)
    tasks: list[asyncio.Task[None]] = []
    server = None
    try:
        try:
            await connector.start()
        except DynamoError as exc:
            raise ConfigError(f"{connector.name} connector: {exc}") from exc
        if config.environment == "local" and not config.no_operation:
            await connector.set_component_replicas(
                [TargetReplica(p, max(1, config.min_endpoint)) for p in config.pools()])
        if config.metrics_port:
            server = await serve_metrics(metrics, config.metrics_port)
        if traffic is not None:
            if isinstance(traffic, FrontendScrapeTraffic):
                with contextlib.suppress(DynamoError):
                    await traffic.observe(0)  # the baseline the first interval is measured from
            tasks.append(asyncio.create_task(every(config.adjustment_interval, planner.throughput_step, "throughput")))
        if load_traffic is not None and isinstance(load_traffic, FrontendScrapeTraffic):
            with contextlib.suppress(DynamoError):
                await load_traffic.observe(0)
        if config.enable_loadbased_scaling:
            for pool in config.pools():
                tasks.append(asyncio.create_task(follow_fpm(planner, runtime, config, pool)))
            tasks.append(asyncio.create_task(every(config.loadbased_adjustment_interval, planner.load_step,
                                                   "load-based")))
        logger.info("planner running: environment %s, mode %s, pools %s%s", config.environment, config.mode,
                    ", ".join(config.pools()), " (advisory: --no-operation)" if config.no_operation else "")
        await runtime.wait_for_shutdown()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            server.close()
        await connector.close()
        for source in (traffic, load_traffic):
            if source is not None:
                await source.close()
        await runtime.shutdown(grace_period=0)


def main(argv: list[str] | None = None) -> None:
    config = PlannerConfig.from_cli_args(build_parser().parse_args(argv))
    cli.configure_logging(config.verbose)
    cli.run(lambda: run(config))


if __name__ == "__main__":
    main()
