"""Echo engine worker: streams the prompt's tokens back, one per item, with a configurable delay.

    python -m dynamo.echo --model-path ../shared/data/models/Qwen3-0.6B
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from dynamo.common import cli
from dynamo.common.configuration import add_argument
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest
from dynamo.llm.protocols.model_card import RuntimeConfig as CardRuntimeConfig
from dynamo.runtime import DistributedRuntime, RequestContext
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("dynamo.echo")


class EchoConfig(RuntimeConfig):
    model_path: str = ""
    model_name: str | None = None
    endpoint: str | None = None
    delay_ms: float = 10.0
    context_length: int = 0
    kv_cache_block_size: int = 16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dynamo.echo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    RuntimeArgGroup().add_arguments(parser)
    add_argument(parser, "--model-path", "DYN_MODEL_PATH", "", "Model directory or Hugging Face repo id.")
    add_argument(parser, "--model-name", "DYN_MODEL_NAME", None, "Served model name (default: folder name).")
    add_argument(parser, "--endpoint", "DYN_ENDPOINT", None,
                 "Endpoint to serve (default: dyn://{namespace}.backend.generate).")
    add_argument(parser, "--delay-ms", "DYN_TOKEN_ECHO_DELAY_MS", 10.0, "Delay per token.", arg_type=float)
    add_argument(parser, "--context-length", "DYN_CONTEXT_LENGTH", 0,
                 "Context length (0: from config.json).", arg_type=int)
    add_argument(parser, "--kv-cache-block-size", "DYN_KV_CACHE_BLOCK_SIZE", 16, "KV block size.", arg_type=int)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return parser


class EchoEngine:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def generate(self, request: PreprocessedRequest, ctx: RequestContext) -> Any:
        max_tokens = request.stop_conditions.max_tokens
        tokens = request.token_ids[: max_tokens] if max_tokens is not None else request.token_ids
        for i, token in enumerate(tokens):
            if ctx.is_stopped():
                yield LLMEngineOutput(finish_reason="cancelled")
                return
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            last = i == len(tokens) - 1
            yield LLMEngineOutput(token_ids=[token], finish_reason=("stop" if last else None))
        if not tokens:
            yield LLMEngineOutput(finish_reason="stop")


async def serve(config: EchoConfig, runtime: DistributedRuntime) -> None:
    card = build_card(config.model_path, config.model_name, context_length=config.context_length,
                      kv_cache_block_size=config.kv_cache_block_size,
                      runtime_config=CardRuntimeConfig(tool_call_parser=config.dyn_tool_call_parser,
                                                       reasoning_parser=config.dyn_reasoning_parser))
    endpoint = runtime.endpoint(config.endpoint or f"dyn://{config.namespace}.backend.generate")
    engine = EchoEngine(config.delay_ms / 1000.0)
    await endpoint.start_serving(engine.generate, request_type=PreprocessedRequest)
    await register_llm(endpoint, card)
    logger.info("echo worker serving model %r on %s", card.name, endpoint.url)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = EchoConfig.from_cli_args(args)
    cli.configure_logging(getattr(args, "verbose", 0) or 0)
    if not config.model_path:
        cli.fail("--model-path is required")

    async def amain() -> None:
        config.validate()
        runtime = await DistributedRuntime.from_settings(config)
        install_signal_handlers(runtime)
        await runtime.start_status_server()
        await serve(config, runtime)
        runtime.health.set_engine_ready()
        await runtime.wait_for_shutdown()

    cli.run(amain)


if __name__ == "__main__":
    main()
