"""dynamo-run: connect one input to one engine in a single command.

    dynamo-run [in=INPUT] [out=ENGINE] [MODEL] [flags]

The ``in=``/``out=`` words are taken out of the command line before argparse sees the rest, so they
may appear anywhere (but not as the value of a flag).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from dynamo.common import cli
from dynamo.common.configuration import add_argument, add_negatable_bool_argument
from dynamo.common.configuration.groups import RuntimeArgGroup, RuntimeConfig
from dynamo.runtime.errors import ConfigError

INPUTS = "text, stdin, http, grpc, batch:FILE.jsonl, dyn://NAMESPACE.COMPONENT.ENDPOINT"
ENGINES = "echo, mocker, auto (= dyn), dyn://NAMESPACE.COMPONENT.ENDPOINT"
ROUTER_MODES = ("round-robin", "random", "kv")

DESCRIPTION = f"""\
Run a model end to end in one command: an input (where requests come from) connected to an engine
(what answers them).

  in=INPUT    {INPUTS}
              text   interactive chat in this terminal (default); Ctrl-C stops a reply, Ctrl-D exits
              stdin  one prompt read from standard input, the answer printed on standard output
              http   OpenAI-compatible server on --http-port (/v1/chat/completions, /v1/completions,
                     /v1/models, /health, /metrics)
              grpc   KServe v2 gRPC server (Triton clients; text_input -> text_output) on --grpc-port,
                     Prometheus /metrics on --grpc-metrics-port; needs the 'grpc' extra
              batch:FILE.jsonl  one chat request per line {{"text": "..."}}; writes output.jsonl next to
                     FILE with response, tokens_in, tokens_out and elapsed_ms per line
              dyn://ns.comp.ep  serve the engine as a worker on that endpoint, registered for discovery
                     (frontends and `out=dyn` find it); runs until SIGTERM/Ctrl-C
  out=ENGINE  {ENGINES}
              echo   in-process engine that streams the prompt back (DYN_TOKEN_ECHO_DELAY_MS per token)
              mocker in-process simulated vLLM engine; tune it with --extra-engine-args JSON
              auto, dyn  models registered by workers, found through --store-kv, routed by --router-mode
                     (default)
              dyn://ns.comp.ep  that endpoint's workers directly, no model discovery; needs
                     --model-name and --model-path
  MODEL       model directory or Hugging Face repo id (same as --model-path); needed by echo and mocker

in=http with out=echo/out=mocker is a complete deployment in one process (frontend, router and engine,
no etcd, NATS or sockets between them).
"""

EXAMPLES = """\
examples:
  dynamo-run in=http out=mocker Qwen/Qwen3-0.6B --http-port 8000
  dynamo-run in=text out=mocker ./models/Qwen3-0.6B --extra-engine-args '{"speedup_ratio": 10}'
  echo "What is Dynamo?" | dynamo-run in=stdin out=echo ./models/Qwen3-0.6B
  dynamo-run in=batch:prompts.jsonl out=mocker ./models/Qwen3-0.6B --request-template tpl.json
  dynamo-run in=dyn://dynamo.backend.generate out=mocker ./models/Qwen3-0.6B   # a worker
  dynamo-run in=http out=dyn --router-mode random                          # a frontend
  dynamo-run in=http out=dyn://dynamo.backend.generate --model-name Qwen3-0.6B --model-path ./models/Qwen3-0.6B

text, stdin and batch requests get max_completion_tokens=256 unless --request-template sets a limit
(out=echo instead echoes the whole prompt, ignoring end-of-sequence tokens).
Logging: -v debug, -vv trace, or DYN_LOG=debug|info|warn|error (text/stdin/batch log warnings only
by default).
"""


class RunConfig(RuntimeConfig):
    in_spec: str = "text"
    out_spec: str = "auto"
    in_kind: str = "text"
    out_kind: str = "dyn"
    in_endpoint: str | None = None
    out_endpoint: str | None = None
    batch_file: str | None = None
    model: str | None = None
    model_path: str | None = None
    model_name: str | None = None
    context_length: int | None = None
    kv_cache_block_size: int = 16
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    grpc_metrics_port: int = 8788
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    router_mode: str = "round-robin"
    kv_overlap_score_weight: float = 1.0
    router_temperature: float = 0.0
    use_kv_events: bool = True
    router_replica_sync: bool = False
    router_track_active_blocks: bool = True
    migration_limit: int = 0
    request_template_path: str | None = None
    request_template: dict[str, Any] | None = None
    extra_engine_args: str | None = None
    namespace_explicit: bool = False
    verbose: int = 0

    @property
    def served_model_hint(self) -> str | None:
        """Which discovered model text/stdin/batch talk to (None: the first one found)."""
        if self.model_name:
            return self.model_name
        if self.model_path:
            return self.model_path.rstrip("/").split("/")[-1]
        model = (self.request_template or {}).get("model")
        return model if isinstance(model, str) and model else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dynamo-run", usage="dynamo-run [in=INPUT] [out=ENGINE] [MODEL] [flags]",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL", help="Model directory or Hugging Face repo id.")
    m = p.add_argument_group("model")
    m.add_argument("--model-path", help="Model directory or Hugging Face repo id (instead of MODEL).")
    m.add_argument("--model-name", help="Served model name (default: the model folder's name); with out=dyn, "
                                        "the discovered model text/stdin/batch talk to.")
    m.add_argument("--context-length", type=int, default=None,
                   help="Context length of the served model (default: from its config.json).")
    m.add_argument("--kv-cache-block-size", type=int, default=16, help="Tokens per KV cache block (16).")
    m.add_argument("--extra-engine-args", default=None,
                   help="out=mocker only: JSON object (inline or a file) of mocker engine arguments, "
                        'e.g. \'{"speedup_ratio": 10, "num_gpu_blocks": 4096}\'.')
    m.add_argument("--request-template", dest="request_template_path", metavar="FILE", default=None,
                   help="JSON object of default request fields (model, temperature, max_completion_tokens, "
                        "...) merged into every request; a request's own fields win.")
    h = p.add_argument_group("http (in=http)")
    add_argument(h, "--http-host", "DYN_HTTP_HOST", "0.0.0.0", "Address the HTTP server binds.")
    add_argument(h, "--http-port", "DYN_HTTP_PORT", 8000, "HTTP port.", arg_type=int)
    add_argument(h, "--tls-cert-path", "DYN_TLS_CERT_PATH", None, "TLS certificate (PEM); needs --tls-key-path.")
    add_argument(h, "--tls-key-path", "DYN_TLS_KEY_PATH", None, "TLS private key (PEM); needs --tls-cert-path.")
    g = p.add_argument_group("grpc (in=grpc; binds --http-host)")
    add_argument(g, "--grpc-port", "DYN_GRPC_PORT", 8001, "KServe gRPC port.", arg_type=int)
    add_argument(g, "--grpc-metrics-port", "DYN_GRPC_METRICS_PORT", 8788,
                 "Port serving GET /metrics beside the gRPC server (0 = off).", arg_type=int)
    r = p.add_argument_group("routing (out=dyn, out=dyn://...)")
    add_argument(r, "--router-mode", "DYN_ROUTER_MODE", "round-robin",
                 "How requests are spread over a model's workers.", choices=list(ROUTER_MODES))
    r.add_argument("--kv-overlap-score-weight", type=float, default=1.0,
                   help="KV routing: weight of prefill cost against decode load (1.0).")
    r.add_argument("--router-temperature", type=float, default=0.0,
                   help="KV routing: softmax temperature of worker selection (0 = best worker).")
    add_negatable_bool_argument(r, "--use-kv-events", "DYN_KV_EVENTS", True,
                                "KV routing: follow workers' KV cache events (else predict them).")
    r.add_argument("--router-replica-sync", action="store_true", default=False,
                   help="KV routing: share routing state between router replicas.")
    add_negatable_bool_argument(r, "--router-track-active-blocks", "DYN_ROUTER_TRACK_ACTIVE_BLOCKS", True,
                                "KV routing: count in-flight requests' blocks as worker load.")
    add_argument(r, "--migration-limit", "DYN_MIGRATION_LIMIT", 0,
                 "Times a request may move to another worker when its worker is lost (0-1023; 0 = off).",
                 arg_type=int)
    RuntimeArgGroup().add_arguments(p.add_argument_group("runtime (in=dyn://..., out=dyn)"))
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v debug, -vv trace (also DYN_LOG).")
    return p


def split_io(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """Take the ``in=``/``out=`` words out of ``argv``; a flag's value is never taken for one."""
    in_spec: str | None = None
    out_spec: str | None = None
    rest: list[str] = []
    takes_value = {opt for action in parser._actions for opt in action.option_strings if action.nargs != 0}
    skip_next = False
    for i, tok in enumerate(argv):
        if skip_next:
            skip_next = False
            rest.append(tok)
            continue
        if tok == "--":
            rest.extend(argv[i:])
            break
        if tok.startswith(("in=", "out=")):
            key, _, value = tok.partition("=")
            if not value:
                cli.fail(f"{key}= needs a value; inputs: {INPUTS}; engines: {ENGINES}")
            if key == "in":
                if in_spec is not None:
                    cli.fail(f"in= given twice ({in_spec!r} and {value!r})")
                in_spec = value
            else:
                if out_spec is not None:
                    cli.fail(f"out= given twice ({out_spec!r} and {value!r})")
                out_spec = value
            continue
        if tok in takes_value:
            skip_next = True
        rest.append(tok)
    return in_spec, out_spec, rest


def _endpoint_spec(word: str, spec: str) -> str:
    parts = spec[len("dyn://"):].split(".")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{word}={spec}: expected dyn://NAMESPACE.COMPONENT.ENDPOINT, e.g. "
                          "dyn://dynamo.backend.generate")
    return spec


def resolve_io(config: RunConfig) -> None:
    spec = config.in_spec
    if spec in ("text", "stdin", "http", "grpc"):
        config.in_kind = spec
    elif spec.startswith("batch:"):
        config.in_kind = "batch"
        config.batch_file = spec[len("batch:"):]
        if not config.batch_file:
            raise ConfigError("in=batch: needs a file, e.g. in=batch:prompts.jsonl")
    elif spec.startswith("dyn://"):
        config.in_kind = "dyn"
        config.in_endpoint = _endpoint_spec("in", spec)
    else:
        raise ConfigError(f"unknown input in={spec}; expected one of: {INPUTS}")
    spec = config.out_spec
    if spec in ("echo", "echo_core", "echo_full"):
        config.out_kind = "echo"
    elif spec == "mocker":
        config.out_kind = "mocker"
    elif spec in ("auto", "dyn"):
        config.out_kind = "dyn"
    elif spec.startswith("dyn://"):
        config.out_kind = "static"
        config.out_endpoint = _endpoint_spec("out", spec)
    else:
        hint = " (this implementation has no built-in inference engines)" if spec in (
            "vllm", "sglang", "trtllm", "mistralrs", "llamacpp") else ""
        raise ConfigError(f"unknown engine out={spec}{hint}; expected one of: {ENGINES}")


def validate(config: RunConfig) -> None:
    """Every wrong-input case as a one-line ConfigError (exit code 2), before anything starts."""
    resolve_io(config)
    if config.model and config.model_path and config.model != config.model_path:
        raise ConfigError(f"the model is given twice: {config.model!r} and --model-path {config.model_path!r}")
    config.model_path = config.model_path or config.model
    if config.extra_engine_args is not None and config.out_kind != "mocker":
        raise ConfigError(f"--extra-engine-args is only accepted with out=mocker (not out={config.out_spec})")
    if config.out_kind in ("echo", "mocker") and not config.model_path:
        raise ConfigError(f"out={config.out_spec} needs a model: pass a model directory or Hugging Face repo id "
                          "as MODEL or --model-path")
    if config.out_kind == "static" and not (config.model_name and config.model_path):
        raise ConfigError(f"out={config.out_spec} needs --model-name and --model-path (the model is not "
                          "discovered for a static endpoint)")
    if config.in_kind == "dyn" and config.out_kind not in ("echo", "mocker"):
        raise ConfigError(f"in={config.in_spec} serves an engine as a worker: use out=mocker or out=echo "
                          f"(not out={config.out_spec})")
    if not 0 <= config.migration_limit <= 1023:
        raise ConfigError(f"--migration-limit must be in [0, 1023], got {config.migration_limit}")
    if not 0 <= config.http_port <= 65535:
        raise ConfigError(f"--http-port must be in [0, 65535], got {config.http_port}")
    for flag, port in (("--grpc-port", config.grpc_port), ("--grpc-metrics-port", config.grpc_metrics_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{flag} must be in [0, 65535], got {port}")
    if config.in_kind == "grpc":
        from dynamo.frontend.grpc import require_kserve

        require_kserve()
    if config.kv_cache_block_size < 1:
        raise ConfigError(f"--kv-cache-block-size must be positive, got {config.kv_cache_block_size}")
    if config.context_length is not None and config.context_length < 1:
        raise ConfigError(f"--context-length must be positive, got {config.context_length}")
    if bool(config.tls_cert_path) != bool(config.tls_key_path):
        raise ConfigError("--tls-cert-path and --tls-key-path must be given together")
    for path in (config.tls_cert_path, config.tls_key_path):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path!r} does not exist")
    if config.in_kind == "batch":
        assert config.batch_file is not None
        from dynamo.run.inputs import read_batch_file

        read_batch_file(config.batch_file)
    if config.request_template_path is not None:
        from dynamo.run.inputs import check_request_template, load_request_template

        config.request_template = load_request_template(config.request_template_path)
        check_request_template(config)
    RuntimeConfig.validate(config)


def parse_config(argv: list[str] | None = None) -> RunConfig:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    in_spec, out_spec, rest = split_io(parser, args_list)
    args = parser.parse_args(rest)
    config = RunConfig.from_cli_args(args)
    config.in_spec = in_spec or "text"
    config.out_spec = out_spec or "auto"
    config.namespace_explicit = (any(a == "--namespace" or a.startswith("--namespace=") for a in rest)
                                 or "DYN_NAMESPACE" in os.environ)
    return config


def _configure_logging(config: RunConfig) -> None:
    cli.configure_logging(config.verbose)
    if config.in_kind in ("text", "stdin", "batch") and not config.verbose and "DYN_LOG" not in os.environ:
        # Log lines would interleave with the conversation on the terminal.
        logging.getLogger().setLevel(logging.WARNING)


async def _run(config: RunConfig) -> int:
    from dynamo.run import engines as eng
    from dynamo.run import inputs

    if config.in_kind == "dyn":
        return await inputs.serve_worker(config)
    runtime: Any = None
    engines: eng.Engines | None = None
    try:
        if config.out_kind in ("echo", "mocker"):
            engines = await eng.local_engines(config)
        else:
            from dynamo.runtime import DistributedRuntime

            runtime = await DistributedRuntime.create(config.store_kv, config.request_plane, config.event_plane)
            if config.out_kind == "static":
                engines = await eng.static_engines(config, runtime)
            else:
                engines = await eng.discovered_engines(config, runtime)
        if config.in_kind == "http":
            await inputs.run_http(config, engines)
            return 0
        if config.in_kind == "grpc":
            await inputs.run_grpc(config, engines)
            return 0
        if config.in_kind == "text":
            return await inputs.run_text(config, engines)
        if config.in_kind == "stdin":
            return await inputs.run_stdin(config, engines)
        return await inputs.run_batch(config, engines)
    finally:
        if engines is not None:
            await engines.close()
        if runtime is not None:
            await runtime.shutdown(grace_period=0)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        validate(config)
    except ConfigError as exc:
        cli.fail(str(exc))
    _configure_logging(config)
    code = 0

    async def amain() -> None:
        nonlocal code
        code = await _run(config)

    cli.run(amain)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
