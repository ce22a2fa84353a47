"""OpenAI-compatible frontend.

    python -m dynamo.frontend --http-port 8000 [--router-mode round-robin|random|power-of-two|least-loaded|kv]

Finds models registered by workers through the discovery store (``--store-kv``), serves
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``, ``/live`` and ``/metrics``;
with ``--kserve-grpc-server`` also the KServe v2 gRPC protocol on ``--grpc-port`` (same process and loop).
``--num-workers N`` runs N such frontends on one port (``process_group.py``).
"""

from __future__ import annotations

import sys

from dynamo.common import cli
from dynamo.common.configuration import dump_config
from dynamo.frontend.args import parse_config
from dynamo.frontend.process_group import supervise
from dynamo.frontend.service import build_frontend, graceful_shutdown_s, serve_grpc, serve_http
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.errors import ConfigError


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

    if config.num_workers > 1:
        try:
            config.validate()
        except ConfigError as exc:
            cli.fail(str(exc))
        try:
            status = supervise(argv if argv is not None else sys.argv[1:], config.http_host, config.http_port,
                               config.num_workers, config.router_mode == "kv", graceful_shutdown_s())
        except OSError as exc:  # the port: in use, or the host is not ours
            cli.fail(f"cannot bind {config.http_host}:{config.http_port}: {exc.strerror or exc}", code=1)
        raise SystemExit(status)

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
