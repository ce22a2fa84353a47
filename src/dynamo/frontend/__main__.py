"""OpenAI-compatible frontend.

    python -m dynamo.frontend --http-port 8000 [--router-mode round-robin|random|power-of-two|least-loaded|kv]

Finds models registered by workers through the discovery store (``--store-kv``), serves
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``, ``/live`` and ``/metrics``;
with ``--kserve-grpc-server`` also the KServe v2 gRPC protocol on ``--grpc-port`` (same process and loop).
"""

from __future__ import annotations

from dynamo.common import cli
from dynamo.common.configuration import dump_config
from dynamo.frontend.args import parse_config
from dynamo.frontend.service import build_frontend, serve_grpc, serve_http
from dynamo.runtime import DistributedRuntime


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    cli.configure_logging(config.verbose)
    if config.interactive:
        # `-i` is dynamo-run's terminal chat over the discovered models, with this frontend's settings.
        from dynamo.run.__main__ import main as run_main

        run_main(["in=text", "out=dyn", "--store-kv", config.store_kv, "--request-plane", config.request_plane,
                  "--event-plane", config.event_plane, "--namespace", config.namespace,
                  "--router-mode", config.router_mode if config.router_mode in ("random", "kv") else "round-robin",
                  "--migration-limit", str(config.migration_limit)])
        return

    async def amain() -> None:
        config.validate()
        dump_config(config.dump_config_to, config)
        runtime = await DistributedRuntime.from_settings(config)
        frontend = await build_frontend(config, runtime)
        try:
            async with serve_grpc(config, frontend):
                await serve_http(config, frontend)
        finally:
            await frontend.close()
            await runtime.shutdown(grace_period=0)

    cli.run(amain)


if __name__ == "__main__":
    main()
