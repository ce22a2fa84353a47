"""``python -m dynamo.vllm``: see :mod:`dynamo.vllm`."""

from __future__ import annotations

from dynamo.common import cli
from dynamo.runtime.errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        cli.fail(f"vLLM is not installed ({exc}); install it with `pip install 'dynamo-py[vllm]'` "
                 "(GPU) or `make vllm` (the CPU build)")
    from dynamo.vllm.args import parse_args
    from dynamo.vllm.worker import serve

    try:
        config, engine_args = parse_args(argv)
    except ConfigError as exc:
        cli.fail(str(exc))
    cli.configure_logging(config.verbose)
    code = 0

    async def amain() -> None:
        nonlocal code
        code = await serve(config, engine_args)

    cli.run(amain)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
