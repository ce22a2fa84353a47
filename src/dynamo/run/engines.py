"""``out=`` engines of dynamo-run: what requests are sent to, wrapped as a frontend model manager.

Every engine ends up as a ``ModelEngine`` (preprocess → route/migrate → detokenize/stop) reachable
through an object with the model-manager queries ``FrontendApp`` uses, so all inputs (HTTP, text,
batch) run one pipeline:

- ``out=echo`` / ``out=mocker``: the engine lives in this process behind a ``LocalRouter``; nothing is
  registered anywhere and no socket sits between frontend and engine.
- ``out=auto`` / ``out=dyn``: the frontend's own discovery (``build_frontend``) on ``--store-kv``.
- ``out=dyn://ns.comp.ep``: a static remote endpoint; the model comes from ``--model-path`` and
  ``--model-name`` instead of a registered card, and the endpoint's instances are routed directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.http.app import FrontendApp
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.pipeline import ModelEngine, PipelineOptions
from dynamo.kv_router.config import KvRouterConfig
from dynamo.llm.busy import BusyThresholds
from dynamo.llm.local_router import LocalRouter
from dynamo.llm.model_manager import WorkerSet
from dynamo.llm.model_registration import build_card
from dynamo.llm.preprocessor.request import OpenAIPreprocessor
from dynamo.llm.protocols.engine import LLMEngineOutput
from dynamo.llm.protocols.model_card import ModelDeploymentCard
from dynamo.llm.protocols.model_card import RuntimeConfig as CardRuntimeConfig
from dynamo.runtime import errors
from dynamo.runtime.discovery import registry
from dynamo.runtime.naming import EndpointId

if TYPE_CHECKING:
    from dynamo.mocker.args import MockEngineArgs
    from dynamo.run.__main__ import RunConfig
    from dynamo.runtime.distributed import DistributedRuntime

logger = logging.getLogger("dynamo.run")

#: per-token delay of the echo engine, as ``python -m dynamo.echo`` (reference §8)
ECHO_DELAY_ENV = "DYN_TOKEN_ECHO_DELAY_MS"
ECHO_DELAY_MS = 10.0

Closer = Callable[[], Awaitable[None]]


def echo_delay_s() -> float:
    raw = os.environ.get(ECHO_DELAY_ENV)
    if raw is None:
        return ECHO_DELAY_MS / 1000.0
    try:
        return max(float(raw), 0.0) / 1000.0
    except ValueError:
        raise errors.ConfigError(f"environment variable {ECHO_DELAY_ENV}={raw!r} is not a number") from None


def mocker_args(config: RunConfig) -> MockEngineArgs:
    """Mocker engine arguments: ``--kv-cache-block-size``, overridden by ``--extra-engine-args``.

    ``--extra-engine-args`` is inline JSON (``{"speedup_ratio": 10}``) or the path of a JSON file.
    """
    from dynamo.mocker.args import MockEngineArgs

    args = MockEngineArgs.from_dict({"block_size": config.kv_cache_block_size})
    extra = config.extra_engine_args
    if extra:
        if extra.lstrip().startswith("{"):
            try:
                obj = json.loads(extra)
            except json.JSONDecodeError as exc:
                raise errors.ConfigError(f"--extra-engine-args is not valid JSON: {exc}") from None
            args = MockEngineArgs.from_dict(obj, base=args)
        else:
            args = MockEngineArgs.from_json(extra, base=args)
    if args.worker_type != "aggregated":
        raise errors.ConfigError("dynamo-run runs aggregated mockers only; drop the prefill/decode setting "
                                 "from --extra-engine-args")
    args.validate()
    return args


def model_card(config: RunConfig, *, block_size: int | None = None,
               runtime_config: CardRuntimeConfig | None = None) -> ModelDeploymentCard:
    assert config.model_path is not None
    return build_card(
        config.model_path, config.model_name, context_length=config.context_length,
        kv_cache_block_size=block_size or config.kv_cache_block_size, migration_limit=config.migration_limit,
        runtime_config=runtime_config or CardRuntimeConfig(
            tool_call_parser=config.dyn_tool_call_parser, reasoning_parser=config.dyn_reasoning_parser),
    )


def mocker_card(config: RunConfig, args: MockEngineArgs) -> ModelDeploymentCard:
    return model_card(config, block_size=args.block_size, runtime_config=CardRuntimeConfig(
        total_kv_blocks=args.num_gpu_blocks, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, data_parallel_size=args.dp_size,
        tool_call_parser=config.dyn_tool_call_parser, reasoning_parser=config.dyn_reasoning_parser))


def pipeline_options(config: RunConfig) -> PipelineOptions:
    return PipelineOptions(router_mode=config.router_mode, migration_limit=config.migration_limit,
                           busy=BusyThresholds())


def frontend_config(config: RunConfig) -> FrontendConfig:
    """The frontend settings dynamo-run's flags imply (HTTP, routing, migration, planes)."""
    fc = FrontendConfig()
    for name in ("namespace", "store_kv", "request_plane", "event_plane", "custom_jinja_template",
                 "dyn_tool_call_parser", "dyn_reasoning_parser", "http_host", "http_port", "tls_cert_path",
                 "tls_key_path", "router_mode", "migration_limit", "kv_overlap_score_weight",
                 "router_temperature", "use_kv_events", "router_replica_sync", "router_track_active_blocks"):
        setattr(fc, name, getattr(config, name))
    fc.model_filter_namespace = config.namespace if config.namespace_explicit else None
    fc.verbose = config.verbose
    fc.kv_router = KvRouterConfig(
        overlap_score_weight=config.kv_overlap_score_weight,
        router_temperature=config.router_temperature,
        use_kv_events=config.use_kv_events,
        router_replica_sync=config.router_replica_sync,
        router_track_active_blocks=config.router_track_active_blocks,
    ).validate()
    return fc


# -- a model manager for exactly one worker set -----------------------------------------------------


class LocalInstances:
    """Stands in for a ``Client`` where ``FrontendApp`` lists instances (``/health``)."""

    def __init__(self, instances: list[registry.Instance]) -> None:
        self._instances = instances

    def instances(self) -> list[registry.Instance]:
        return list(self._instances)

    def instance_ids(self) -> list[int]:
        return [i.instance_id for i in self._instances]

    async def close(self) -> None:
        return None


class SingleModelManager:
    """The model-manager queries ``FrontendApp`` makes, answered for one fixed worker set."""

    def __init__(self, ws: WorkerSet, closers: list[Closer] | None = None) -> None:
        self.ws = ws
        self.sets: dict[str, dict[str, WorkerSet]] = {ws.model: {ws.key: ws}}
        self.changed = asyncio.Event()
        self.changed.set()
        self.on_change: list[Callable[[], None]] = []
        self._closers = closers or []

    def model_names(self, model_type: str | None = None) -> list[str]:
        if model_type is not None and model_type not in self.ws.card.model_type:
            return []
        return [self.ws.model]

    def has_type(self, model_type: str) -> bool:
        return bool(self.model_names(model_type))

    def worker_set(self, model: str, model_type: str | None = None) -> WorkerSet:
        if model != self.ws.model:
            raise errors.NotFound(f"model '{model}' not found (this dynamo-run serves '{self.ws.model}')")
        if model_type is not None and model_type not in self.ws.card.model_type:
            raise errors.NotFound(f"model '{model}' does not support {model_type}")
        return self.ws

    def all_sets(self) -> list[WorkerSet]:
        return [self.ws]

    async def close(self) -> None:
        engine = self.ws.engine
        if engine is not None:
            await engine.close()
        for closer in reversed(self._closers):
            await closer()


# -- what the inputs get ----------------------------------------------------------------------------


@dataclass
class Engines:
    """The served models, ready for any input: an ASGI app for HTTP, ``ModelEngine``s for the rest."""

    manager: Any
    metrics: FrontendMetrics
    app: FrontendApp
    kind: str
    frontend: Any = None
    closers: list[Closer] = field(default_factory=list)

    async def wait_for_model(self, wanted: str | None, model_type: str = "chat") -> str:
        """The served model to use: ``wanted``, or the first one; waits while discovery finds none."""
        announced = False
        while True:
            names = self.manager.model_names(model_type)
            if wanted is not None and wanted in names:
                return wanted
            if wanted is None and names:
                return str(names[0])
            self.manager.changed.clear()
            if announced:
                await self.manager.changed.wait()
                continue
            try:
                # Discovery usually delivers the registered models within moments: only say we are
                # waiting when that is not the case.
                await asyncio.wait_for(self.manager.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                what = f"model {wanted!r}" if wanted else "a model"
                print(f"Waiting for {what} to be registered (start a worker, e.g. "
                      "`python -m dynamo.mocker --model-path <model>`)...", file=sys.stderr, flush=True)
                announced = True

    def engine(self, model: str, model_type: str = "chat") -> ModelEngine:
        ws = self.manager.worker_set(model, model_type)
        if ws.engine is None:
            raise errors.Unavailable(f"model '{model}' is still loading")
        engine: ModelEngine = ws.engine
        return engine

    async def close(self) -> None:
        if self.frontend is not None:
            await self.frontend.close()
        else:
            await self.manager.close()
        for closer in reversed(self.closers):
            await closer()


def _local_instance(iid: int) -> registry.Instance:
    return registry.Instance("dynamo", "backend", "generate", iid, {"local": "in-process"})


async def _engines_for(ws: WorkerSet, router: Any, config: RunConfig, kind: str,
                       closers: list[Closer]) -> Engines:
    pre = await asyncio.to_thread(OpenAIPreprocessor.from_card, ws.card,
                                  custom_template_path=config.custom_jinja_template,
                                  exclude_tools_when_tool_choice_none=config.exclude_tools_when_tool_choice_none)
    metrics = FrontendMetrics()
    ws.engine = ModelEngine(ws, pre, router, metrics, pipeline_options(config))
    manager = SingleModelManager(ws, closers)
    app = FrontendApp(manager, metrics, direct_routing=config.router_mode == "direct")  # type: ignore[arg-type]
    return Engines(manager, metrics, app, kind)  # type: ignore[arg-type]


async def local_engines(config: RunConfig) -> Engines:
    """``out=echo`` / ``out=mocker``: the engine in this process behind a ``LocalRouter``."""
    iid = random.getrandbits(63)
    closers: list[Closer] = []
    engine: Any
    if config.out_kind == "mocker":
        from dynamo.mocker.engine import MockerEngine

        args = mocker_args(config)
        card = mocker_card(config, args)
        mocker = MockerEngine(args, iid)
        mocker.start()
        closers.append(mocker.stop)
        engine = mocker
    else:
        from dynamo.echo.__main__ import EchoEngine

        card = model_card(config)
        engine = EchoEngine(echo_delay_s())
    ws = WorkerSet("dynamo", card.name, False, card, card.checksum(), ("dynamo", "backend", "generate"),
                   instances={iid})
    ws.client = LocalInstances([_local_instance(iid)])  # type: ignore[assignment]
    router = LocalRouter({iid: engine}, config.router_mode)
    logger.info("%s engine for model %r running in this process", config.out_kind, card.name)
    return await _engines_for(ws, router, config, config.out_kind, closers)


async def static_engines(config: RunConfig, runtime: DistributedRuntime) -> Engines:
    """``out=dyn://ns.comp.ep``: route to that endpoint's instances; the model comes from the flags."""
    from dynamo.llm.push_router import PushRouter

    assert config.out_endpoint is not None
    eid = EndpointId.parse(config.out_endpoint)
    card = model_card(config)
    endpoint = runtime.namespace(eid.namespace).component(eid.component).endpoint(eid.name)
    client = await endpoint.client(LLMEngineOutput)
    ws = WorkerSet(eid.namespace, card.name, False, card, card.checksum(),
                   (eid.namespace, eid.component, eid.name), instances=set(client.instance_ids()), client=client)

    def follow(kind: str, inst: registry.Instance) -> None:
        if kind == "added":
            ws.instances.add(inst.instance_id)
        else:
            ws.instances.discard(inst.instance_id)

    client.on_change(follow)
    mode = config.router_mode if config.router_mode != "kv" else "round-robin"
    router = PushRouter(client, mode)
    logger.info("routing model %r to the static endpoint %s", card.name, endpoint.url)
    return await _engines_for(ws, router, config, "static", [client.close])


async def discovered_engines(config: RunConfig, runtime: DistributedRuntime) -> Engines:
    """``out=auto`` / ``out=dyn``: models registered by workers, found through the store."""
    from dynamo.frontend.service import build_frontend

    frontend = await build_frontend(frontend_config(config), runtime)
    return Engines(frontend.manager, frontend.metrics, frontend.app, "dyn", frontend=frontend)
