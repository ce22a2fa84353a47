"""Start a vLLM engine, put it on the planes, and keep it there until shutdown or engine death."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from dynamo.common.configuration import dump_config
from dynamo.kv_router.publisher import WorkerPublisher, ZmqKvEventBridge
from dynamo.kv_router.recovery import KV_DUMP_ENDPOINT
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.llm.protocols.engine import PreprocessedRequest
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.model_card import RuntimeConfig as CardRuntimeConfig
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.errors import ConfigError
from dynamo.runtime.shutdown import install_signal_handlers
from dynamo.vllm import plugin
from dynamo.vllm.args import VllmConfig, kv_events_source, use_kv_events_endpoint
from dynamo.vllm.handler import VllmHandler

logger = logging.getLogger("dynamo.vllm")

#: how often the worker checks that the engine core is still alive
ENGINE_WATCH_SECS = 0.5


def served_name(vllm_config: Any) -> str:
    name = vllm_config.model_config.served_model_name
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name or vllm_config.model_config.model)


def engine_card(config: VllmConfig, vllm_config: Any) -> ModelDeploymentCard:
    """The model card from the engine's real configuration (after it sized its KV cache)."""
    mc, cc, sc, pc = (vllm_config.model_config, vllm_config.cache_config, vllm_config.scheduler_config,
                      vllm_config.parallel_config)
    return build_card(
        mc.tokenizer or mc.model, served_name(vllm_config),
        context_length=mc.max_model_len,
        kv_cache_block_size=cc.block_size,
        model_type=["prefill"] if config.role == "prefill" else config.endpoint_type_list,
        migration_limit=config.migration_limit,
        chat_template=config.custom_jinja_template,
        runtime_config=CardRuntimeConfig(
            total_kv_blocks=cc.num_gpu_blocks, max_num_seqs=sc.max_num_seqs,
            max_num_batched_tokens=sc.max_num_batched_tokens, data_parallel_size=pc.data_parallel_size,
            tool_call_parser=config.dyn_tool_call_parser, reasoning_parser=config.dyn_reasoning_parser),
    )


class EngineStats:
    """A vLLM stat logger that turns scheduler and iteration stats into our load and forward-pass reports.

    vLLM calls :meth:`record` on the worker's event loop after each engine iteration, once per dp rank.
    """

    def __init__(self, publisher: WorkerPublisher | None, total_blocks: int) -> None:
        self.publisher = publisher
        self.total_blocks = total_blocks

    def factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                stats.record(engine_idx, scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger

    def record(self, rank: int, sched: Any, it: Any) -> None:
        pub = self.publisher
        if pub is None or sched is None:
            return
        used = round(sched.kv_cache_usage * self.total_blocks)
        pub.load(rank, used)
        prompt = it.num_prompt_tokens if it is not None else 0
        generated = it.num_generation_tokens if it is not None else 0
        pub.forward_pass(rank, time.monotonic(), num_running=sched.num_running_reqs,
                         num_waiting=sched.num_waiting_reqs, kv_used_blocks=used,
                         scheduled_tokens=prompt + generated, emitted_tokens=generated,
                         preempted=it.num_preempted_reqs if it is not None else 0)


def start_engine(engine_args: Any, stats: EngineStats) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    # inherited by the engine's processes: they die with this one (dynamo/vllm/plugin.py)
    os.environ[plugin.ENV] = "1"
    try:
        return AsyncLLM.from_engine_args(engine_args, stat_loggers=[stats.factory()])
    except (ValueError, TypeError, OSError) as exc:
        # vLLM validates the model and its configuration while building the engine
        raise ConfigError(f"vLLM could not start: {exc}") from None


async def watch_engine(engine: Any, runtime: DistributedRuntime, state: dict[str, int]) -> None:
    """Deregister and stop as soon as the engine core dies: nothing this worker accepts can finish."""
    while True:
        await asyncio.sleep(ENGINE_WATCH_SECS)
        if engine.errored:
            logger.error("vLLM engine core died: deregistering this worker and exiting")
            state["exit_code"] = 1
            await runtime.shutdown(grace_period=0)
            return


async def serve(config: VllmConfig, engine_args: Any) -> int:
    """Run one worker until SIGTERM/SIGINT (exit code 0) or engine death (1)."""
    source = kv_events_source(engine_args)
    dump_config(config.dump_config_to, config)
    stats = EngineStats(None, 0)
    bridge: ZmqKvEventBridge | None = None
    if source is not None:
        # worker id and sink are known once the runtime exists; events only flow after requests
        bridge = ZmqKvEventBridge(None if source == "bind" else source, 0, lambda _event: None)
        if source == "bind":
            use_kv_events_endpoint(engine_args, bridge.bind(ranks=engine_args.data_parallel_size or 1))
    # The engine comes first: building it blocks this loop for tens of seconds, which would starve an
    # etcd lease keep-alive, and nothing is registered until it can serve.
    started = time.monotonic()
    try:
        engine = start_engine(engine_args, stats)
    except BaseException:
        if bridge is not None:
            await bridge.close()
        raise
    try:
        card = engine_card(config, engine.vllm_config)
        runtime = await DistributedRuntime.from_settings(config)
    except BaseException:
        engine.shutdown()
        if bridge is not None:
            await bridge.close()
        raise
    install_signal_handlers(runtime)
    state = {"exit_code": 0}
    try:
        await runtime.start_status_server()
        endpoint = runtime.endpoint(config.endpoint_url)
        iid = runtime.instance_id
        publisher = await WorkerPublisher.create(runtime, endpoint.namespace, endpoint.component, iid)
        stats.publisher, stats.total_blocks = publisher, card.runtime_config.total_kv_blocks or 0
        if bridge is not None:
            bridge.worker_id, bridge.publish, bridge.block_size = iid, publisher.kv_event, card.kv_cache_block_size
            bridge.start()
        handler = VllmHandler(engine, data_parallel_size=card.runtime_config.data_parallel_size, role=config.role)
        await endpoint.start_serving(handler.generate, request_type=PreprocessedRequest, instance_id=iid)
        dump_ep = runtime.namespace(endpoint.namespace).component(endpoint.component).endpoint(KV_DUMP_ENDPOINT)
        await dump_ep.start_serving(publisher.kv_dump, instance_id=iid)
        await register_llm(endpoint, card, iid)
        runtime.health.set_engine_ready()
        logger.info("vLLM %sworker %x serving %r on %s (ready in %.1f s; block size %d, %s KV blocks, "
                    "max_model_len %d, KV events %s)", "" if config.role == "aggregated" else config.role + " ", iid, card.name, endpoint.url, time.monotonic() - started,
                    card.kv_cache_block_size, card.runtime_config.total_kv_blocks, card.context_length,
                    bridge.endpoint if bridge is not None else "off")
        watcher = asyncio.get_running_loop().create_task(watch_engine(engine, runtime, state))
        await runtime.wait_for_shutdown()
        watcher.cancel()
    finally:
        if bridge is not None:
            await bridge.close()
        engine.shutdown()
        await runtime.shutdown(grace_period=0)
    return state["exit_code"]
