"""Mocker: a simulated vLLM-style engine worker (continuous batching, paged KV cache with prefix
caching, KV events, timing from a perf model) so the whole system runs without GPUs.

    python -m dynamo.mocker --model-path ../shared/data/models/Qwen3-0.6B --speedup-ratio 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import random
import time
from typing import Any

import msgspec

from dynamo.common import cli
from dynamo.common.configuration import add_argument, add_negatable_bool_argument, dump_config
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.kv_router.publisher import WorkerPublisher
from dynamo.kv_router.recovery import KV_DUMP_ENDPOINT
from dynamo.llm.model_path import resolve_model_path
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.llm.protocols.engine import PreprocessedRequest
from dynamo.llm.protocols.model_card import DisaggregatedEndpoint
from dynamo.llm.protocols.model_card import RuntimeConfig as CardRuntimeConfig
from dynamo.mocker.args import MockEngineArgs
from dynamo.mocker.bootstrap import BootstrapServer
from dynamo.mocker.engine import MockerEngine
from dynamo.mocker.perf_model import kv_bytes_per_token
from dynamo.mocker.scheduler import PassResult
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.errors import ConfigError
from dynamo.runtime.host_address import advertised_host
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("dynamo.mocker")


class MockerConfig(RuntimeConfig):
    model_path: str = ""
    model_name: str | None = None
    endpoint: str | None = None
    num_gpu_blocks_override: int = 16384
    block_size: int = 64
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    preemption_mode: str = "lifo"
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    data_parallel_size: int = 1
    startup_time: float | None = None
    planner_profile_data: str | None = None
    num_workers: int = 1
    reasoning: str | None = None
    engine_type: str = "vllm"
    extra_engine_args: str | None = None
    disaggregation_mode: str = "agg"
    context_length: int = 0
    migration_limit: int = 0
    kv_transfer_bandwidth: float = 64.0
    kv_bytes_per_token: int | None = None
    kv_cache_dtype: str = "auto"
    stagger_delay: float = -1.0
    is_prefill_worker: bool = False
    is_decode_worker: bool = False
    bootstrap_ports: str | None = None
    zmq_kv_events_ports: str | None = None
    zmq_replay_ports: str | None = None
    verbose: int = 0

    def stagger_secs(self, index: int) -> float:
        """Delay before starting worker ``index`` (reference: auto = 0 s up to 32 workers, 0.1 s up to
        128, else 0.2 s, plus a 2 s pause every 32 workers)."""
        if index == 0:
            return 0.0
        if self.stagger_delay >= 0:
            return self.stagger_delay
        n = self.num_workers
        base = 0.0 if n <= 32 else 0.1 if n <= 128 else 0.2
        return base + (2.0 if n > 32 and index % 32 == 0 else 0.0)

    def worker_mode(self) -> str:
        """``aggregated``, ``prefill`` or ``decode`` from --disaggregation-mode and the legacy flags."""
        if self.is_prefill_worker and self.is_decode_worker:
            raise ConfigError("--is-prefill-worker and --is-decode-worker are mutually exclusive")
        legacy = "prefill" if self.is_prefill_worker else "decode" if self.is_decode_worker else None
        mode = {"agg": "aggregated", "prefill": "prefill", "decode": "decode"}.get(self.disaggregation_mode)
        if mode is None:
            raise ConfigError(f"--disaggregation-mode must be agg, prefill or decode; got {self.disaggregation_mode!r}")
        if legacy is not None and self.disaggregation_mode != "agg" and legacy != mode:
            raise ConfigError(f"--disaggregation-mode {self.disaggregation_mode} contradicts --is-{legacy}-worker")
        return legacy or mode

    def bootstrap_port_list(self) -> list[int]:
        """``--bootstrap-ports``: one port per worker of --num-workers (0 = any free port)."""
        if not self.bootstrap_ports:
            return []
        try:
            ports = [int(p) for p in str(self.bootstrap_ports).split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--bootstrap-ports must be comma-separated port numbers; got "
                              f"{self.bootstrap_ports!r}") from None
        if any(not 0 <= p <= 65535 for p in ports):
            raise ConfigError(f"--bootstrap-ports must be in [0, 65535]; got {self.bootstrap_ports!r}")
        if len(ports) != self.num_workers:
            raise ConfigError(f"--bootstrap-ports lists {len(ports)} port(s) for --num-workers {self.num_workers}; "
                              "give one per worker")
        return ports

    def engine_args(self) -> MockEngineArgs:
        base = {
            "num_gpu_blocks": self.num_gpu_blocks_override,
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "preemption_mode": self.preemption_mode,
            "speedup_ratio": self.speedup_ratio,
            "decode_speedup_ratio": self.decode_speedup_ratio,
            "dp_size": self.data_parallel_size,
            "startup_time": self.startup_time,
            "planner_profile_data": self.planner_profile_data,
            "engine_type": self.engine_type,
            "kv_transfer_bandwidth": self.kv_transfer_bandwidth,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "durable_kv_events": self.durable_kv_events,
            "kv_cache_dtype": self.kv_cache_dtype,
        }
        if self.reasoning:
            base["reasoning"] = self.reasoning
        args = MockEngineArgs.from_dict(base)
        if self.extra_engine_args:
            args = MockEngineArgs.from_json(self.extra_engine_args, base=args)
        for flag, value in (("--zmq-kv-events-ports", self.zmq_kv_events_ports),
                            ("--zmq-replay-ports", self.zmq_replay_ports)):
            if value:
                raise ConfigError(f"{flag} is not available yet; KV events are published on the event plane")
        mode = self.worker_mode()
        if "worker_type" not in args.explicitly_set or mode != "aggregated":
            args = dataclasses.replace(args, worker_type=mode)
        if args.kv_bytes_per_token is None and args.worker_type != "aggregated":
            args = dataclasses.replace(args, kv_bytes_per_token=kv_bytes_per_token_from_config(
                self.model_path, args.kv_cache_dtype))
        ports = self.bootstrap_port_list()
        if ports and args.worker_type != "prefill":
            raise ConfigError("--bootstrap-ports is only for prefill workers (--disaggregation-mode prefill)")
        return args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynamo.mocker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    RuntimeArgGroup().add_arguments(p)
    g = p.add_argument_group("model")
    add_argument(g, "--model-path", "DYN_MODEL_PATH", "", "Model directory or Hugging Face repo id "
                 "(tokenizer and config only; no weights are loaded).")
    add_argument(g, "--model-name", "DYN_MODEL_NAME", None, "Served model name (default: the folder name).")
    add_argument(g, "--endpoint", "DYN_ENDPOINT", None, "Endpoint (default dyn://{namespace}.backend.generate).")
    add_argument(g, "--context-length", "DYN_CONTEXT_LENGTH", 0, "Context length (0: from config.json).", arg_type=int)
    add_argument(g, "--migration-limit", "DYN_MIGRATION_LIMIT", 0,
                 "Migration limit advertised in the model card (0-1023).", arg_type=int)
    e = p.add_argument_group("engine")
    add_argument(e, "--num-gpu-blocks-override", "DYN_MOCKER_NUM_GPU_BLOCKS", 16384, "KV cache blocks per dp rank.",
                 arg_type=int)
    add_argument(e, "--block-size", "DYN_MOCKER_BLOCK_SIZE", 64, "Tokens per KV block.", arg_type=int)
    add_argument(e, "--max-num-seqs", "DYN_MOCKER_MAX_NUM_SEQS", 256, "Max running sequences per pass.", arg_type=int)
    add_argument(e, "--max-num-batched-tokens", "DYN_MOCKER_MAX_NUM_BATCHED_TOKENS", 8192, "Token budget per pass.",
                 arg_type=int)
    add_negatable_bool_argument(e, "--enable-prefix-caching", "DYN_MOCKER_ENABLE_PREFIX_CACHING", True,
                                "Reuse cached KV blocks across requests.")
    add_negatable_bool_argument(e, "--enable-chunked-prefill", "DYN_MOCKER_ENABLE_CHUNKED_PREFILL", True,
                                "Split long prompts across passes.")
    add_argument(e, "--preemption-mode", "DYN_MOCKER_PREEMPTION_MODE", "lifo", "Which request to preempt "
                 "when the KV cache is full.", choices=["lifo", "fifo"])
    add_argument(e, "--speedup-ratio", "DYN_MOCKER_SPEEDUP_RATIO", 1.0, "Run simulated time this many times "
                 "faster than real time.", arg_type=float)
    add_argument(e, "--decode-speedup-ratio", "DYN_MOCKER_DECODE_SPEEDUP_RATIO", 1.0,
                 "Extra speedup for decode passes.", arg_type=float)
    add_argument(e, "--data-parallel-size", "DYN_MOCKER_DATA_PARALLEL_SIZE", 1, "Data-parallel ranks per worker.",
                 arg_type=int)
    add_argument(e, "--startup-time", "DYN_MOCKER_STARTUP_TIME", None, "Simulated start-up delay (s).",
                 arg_type=float)
    add_argument(e, "--planner-profile-data", "DYN_MOCKER_PROFILE_DATA", None,
                 "Profiling NPZ file/dir for interpolated timing (default: polynomial model).")
    add_argument(e, "--num-workers", "DYN_MOCKER_NUM_WORKERS", 1, "Independent workers in this process.",
                 arg_type=int)
    add_argument(e, "--reasoning", "DYN_MOCKER_REASONING", None, "JSON {start_thinking_token_id, "
                 "end_thinking_token_id, thinking_ratio}.")
    add_argument(e, "--engine-type", "DYN_MOCKER_ENGINE_TYPE", "vllm", "Scheduler flavour.", choices=["vllm", "sglang"])
    add_argument(e, "--extra-engine-args", "DYN_MOCKER_EXTRA_ENGINE_ARGS", None,
                 "JSON file whose keys override the engine flags.")
    add_argument(e, "--disaggregation-mode", "DYN_MOCKER_DISAGGREGATION_MODE", "agg",
                 "agg (default); prefill: register a prefill-only worker on dyn://{namespace}.prefill.generate "
                 "(max_tokens forced to 1, KV handed to decode workers); decode: take requests with a prefill "
                 "result or bootstrap info.", choices=["agg", "prefill", "decode"])
    add_argument(e, "--kv-transfer-bandwidth", "DYN_MOCKER_KV_TRANSFER_BANDWIDTH", 64.0,
                 "KV transfer bandwidth in GB/s (disaggregation).", arg_type=float)
    add_argument(e, "--kv-bytes-per-token", "DYN_MOCKER_KV_BYTES_PER_TOKEN", None, "KV bytes per token.",
                 arg_type=int)
    add_argument(e, "--kv-cache-dtype", "DYN_MOCKER_KV_CACHE_DTYPE", "auto", "KV cache dtype (sizing only).")
    add_argument(e, "--stagger-delay", "DYN_MOCKER_STAGGER_DELAY", -1.0,
                 "Seconds between starting workers of --num-workers (-1: automatic).", arg_type=float)
    add_negatable_bool_argument(e, "--is-prefill-worker", "DYN_MOCKER_IS_PREFILL_WORKER", False,
                                "Legacy spelling of --disaggregation-mode prefill.")
    add_negatable_bool_argument(e, "--is-decode-worker", "DYN_MOCKER_IS_DECODE_WORKER", False,
                                "Legacy spelling of --disaggregation-mode decode.")
    add_argument(e, "--bootstrap-ports", "DYN_MOCKER_BOOTSTRAP_PORTS", None,
                 "Prefill workers: KV bootstrap ports, one per worker (0 = any free port). Decode workers meet "
                 "the prefill worker there (bootstrap path); without it the frontend waits for each prefill "
                 "and hands its result to the decode worker (synchronous path).")
    add_argument(e, "--zmq-kv-events-ports", "DYN_MOCKER_ZMQ_KV_EVENTS_PORTS", None,
                 "Also publish vLLM-native ZMQ KV events on these ports (not available yet).")
    add_argument(e, "--zmq-replay-ports", "DYN_MOCKER_ZMQ_REPLAY_PORTS", None,
                 "ZMQ replay ROUTER ports (not available yet).")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return p


def kv_bytes_per_token_from_config(model_path: str, kv_cache_dtype: str) -> int | None:
    """KV bytes per token of the model at ``model_path`` (its ``config.json``); None if unknown."""
    try:
        cfg = json.loads((resolve_model_path(model_path) / "config.json").read_text())
    except (OSError, ValueError, ConfigError):
        return None
    return kv_bytes_per_token(cfg, kv_cache_dtype) if isinstance(cfg, dict) else None


def mocker_card(config: MockerConfig, args: MockEngineArgs) -> Any:
    return build_card(
        config.model_path, config.model_name, context_length=config.context_length,
        kv_cache_block_size=args.block_size, migration_limit=config.migration_limit,
        model_type=["prefill"] if args.worker_type == "prefill" else None,
        runtime_config=CardRuntimeConfig(
            total_kv_blocks=args.num_gpu_blocks, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, data_parallel_size=args.dp_size,
            tool_call_parser=config.dyn_tool_call_parser, reasoning_parser=config.dyn_reasoning_parser),
    )


def default_endpoint(config: MockerConfig, args: MockEngineArgs) -> str:
    component = "prefill" if args.worker_type == "prefill" else "backend"
    return config.endpoint or f"dyn://{config.namespace}.{component}.generate"


async def start_worker(runtime: DistributedRuntime, config: MockerConfig, args: MockEngineArgs,
                       instance_id: int, card: Any, bootstrap_port: int | None = None) -> MockerEngine:
    endpoint = runtime.endpoint(default_endpoint(config, args))
    pub = await WorkerPublisher.create(runtime, endpoint.namespace, endpoint.component, instance_id)
    bootstrap = None
    if bootstrap_port is not None:
        # Decode workers dial this port, so it listens where the request plane does and advertises
        # the same kind of address.
        bind = os.environ.get("DYN_TCP_RPC_HOST") or "127.0.0.1"
        bootstrap = BootstrapServer(bind, bootstrap_port)
        await bootstrap.start()
        host = advertised_host(bind, os.environ.get("DYN_TCP_RPC_ADVERTISE_HOST"))
        rc = msgspec.structs.replace(card.runtime_config, disaggregated_endpoint=DisaggregatedEndpoint(
            bootstrap_host=host, bootstrap_port=bootstrap.port))
        card = msgspec.structs.replace(card, runtime_config=rc)

    def pass_sink(rank: int, r: PassResult) -> None:
        pub.forward_pass(rank, time.monotonic(), num_running=r.num_running, num_waiting=r.num_waiting,
                         kv_used_blocks=r.active_blocks, scheduled_tokens=r.num_scheduled_tokens,
                         emitted_tokens=len(r.emitted), prefill_ms=r.prefill_ms, decode_ms=r.decode_ms,
                         preempted=len(r.preempted))

    engine = MockerEngine(args, instance_id, kv_sink=pub.kv_events, load_sink=pub.load, pass_sink=pass_sink,
                          bootstrap=bootstrap)
    engine.start()
    await endpoint.start_serving(engine.generate, request_type=PreprocessedRequest, instance_id=instance_id)
    dump_ep = runtime.namespace(endpoint.namespace).component(endpoint.component).endpoint(KV_DUMP_ENDPOINT)
    await dump_ep.start_serving(pub.kv_dump, instance_id=instance_id)
    await register_llm(endpoint, card, instance_id)
    role = {"aggregated": "", "prefill": " prefill", "decode": " decode"}[args.worker_type]
    extra = f", KV bootstrap on port {bootstrap.port}" if bootstrap is not None else ""
    logger.info("mocker%s worker %x serving %r on %s (block size %d, %d KV blocks, speedup %g%s)", role,
                instance_id, card.name, endpoint.url, args.block_size, args.num_gpu_blocks, args.speedup_ratio, extra)
    return engine


def main(argv: list[str] | None = None) -> None:
    parsed = build_parser().parse_args(argv)
    config = MockerConfig.from_cli_args(parsed)
    cli.configure_logging(config.verbose)
    if not config.model_path:
        cli.fail("--model-path is required (a model directory or a Hugging Face repo id)")
    if config.num_workers < 1:
        cli.fail("--num-workers must be >= 1")
    if not 0 <= config.migration_limit <= 1023:
        cli.fail("--migration-limit must be in [0, 1023]")

    async def amain() -> None:
        config.validate()
        args = config.engine_args()
        card = mocker_card(config, args)
        ports = config.bootstrap_port_list()
        dump_config(config.dump_config_to, config)
        runtime = await DistributedRuntime.from_settings(config)
        install_signal_handlers(runtime)
        await runtime.start_status_server()
        if args.startup_time:
            await asyncio.sleep(args.startup_time)
        engines = []
        for i in range(config.num_workers):
            delay = config.stagger_secs(i)
            if delay:
                await asyncio.sleep(delay)
            iid = runtime.instance_id if i == 0 else random.getrandbits(63)
            port = ports[i] if ports else None
            engines.append(await start_worker(runtime, config, args, iid, card, port))
        runtime.health.set_engine_ready()
        await runtime.wait_for_shutdown()
        for engine in engines:
            await engine.stop()
            if engine.bootstrap is not None:
                await engine.bootstrap.close()

    cli.run(amain)


if __name__ == "__main__":
    main()
