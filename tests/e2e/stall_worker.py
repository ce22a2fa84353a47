"""A worker that streams a few tokens and then goes silent while keeping its connection open.

It stands in for a hung engine (a stuck GPU, a deadlocked scheduler): the frontend sees neither an
error nor a closed socket, only the absence of tokens. Every request it receives is appended to the
``--record`` file (one line: request id and prompt length) so a test can tell what reached it.

    python tests/e2e/stall_worker.py --model-path .../Qwen3-0.6B --tokens 3 --record /tmp/got.txt
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from dynamo.common import cli
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.llm.model_registration import build_card, register_llm
from dynamo.llm.protocols.engine import LLMEngineOutput, PreprocessedRequest
from dynamo.runtime import DistributedRuntime, RequestContext
from dynamo.runtime.shutdown import install_signal_handlers

logger = logging.getLogger("stall_worker")

#: token ids inside the range the mocker emits, so the text decodes like a mocker's
FIRST_TOKEN_ID = 1000


class StallConfig(RuntimeConfig):
    model_path: str = ""
    tokens: int = 3
    token_delay_ms: float = 20.0
    block_size: int = 64
    record: str = ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    RuntimeArgGroup().add_arguments(parser)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--tokens", type=int, default=3, help="Tokens streamed before going silent.")
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    # Must match the mockers' block size: the card checksum decides whether we join their worker set.
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--record", required=True, help="File that gets one line per received request.")
    return parser


class StallingEngine:
    def __init__(self, tokens: int, delay_s: float, record: Path) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self.record = record

    async def generate(self, request: PreprocessedRequest, ctx: RequestContext) -> AsyncIterator[LLMEngineOutput]:
        with self.record.open("a") as f:
            f.write(f"{request.request_id or ctx.id} {len(request.token_ids)}\n")
        for i in range(self.tokens):
            await asyncio.sleep(self.delay_s)
            yield LLMEngineOutput(token_ids=[FIRST_TOKEN_ID + i])
        # Silent from here on; only the client giving up (KILL frame) or shutdown ends this.
        await asyncio.Event().wait()


async def serve(config: StallConfig, runtime: DistributedRuntime) -> None:
    card = build_card(config.model_path, kv_cache_block_size=config.block_size)
    endpoint = runtime.endpoint(f"dyn://{config.namespace}.backend.generate")
    engine = StallingEngine(config.tokens, config.token_delay_ms / 1000.0, Path(config.record))
    await endpoint.start_serving(engine.generate, request_type=PreprocessedRequest)
    await register_llm(endpoint, card)
    logger.info("stalling worker serving %r (stalls after %d tokens)", card.name, config.tokens)


def main() -> None:
    args = build_parser().parse_args()
    config = StallConfig.from_cli_args(args)
    cli.configure_logging(0)

    async def amain() -> None:
        runtime = await DistributedRuntime.from_settings(config)
        install_signal_handlers(runtime)
        await serve(config, runtime)
        await runtime.wait_for_shutdown()

    cli.run(amain)


if __name__ == "__main__":
    main()
