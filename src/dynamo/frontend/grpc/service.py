"""The KServe v2 ``GRPCInferenceService`` over the frontend's model manager and pipelines.

Text models only (Triton's LLM tensor conventions, see ``tensors.py``): a request is decoded into a
completion request and runs through the same ``ModelEngine`` as ``/v1/completions`` (preprocess →
migration → router → detokenize/stop). Errors become gRPC status codes through
``dynamo.runtime.errors.grpc_status``; in ModelStreamInfer they travel as the stream's
``error_message`` (Triton's convention), so one failed request does not end the client's stream.

The message classes are the ones ``tritonclient[grpc]`` compiles from Triton's own protos (the
``grpc`` extra), which keeps the wire format identical to what Triton clients expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pydantic
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from dynamo.frontend.grpc.tensors import (
    FINISH_REASON,
    SAMPLING,
    TEXT_INPUT,
    TEXT_OUTPUT,
    TextRequest,
    decode_request,
    encode_response,
)
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.pipeline import ModelEngine
from dynamo.llm.model_manager import ModelManager
from dynamo.llm.protocols import openai as oai
from dynamo.runtime import errors

logger = logging.getLogger("dynamo.frontend.grpc")

MODEL_TYPE = "completions"
#: the Triton platform string clients see in metadata/config
PLATFORM = "dynamo"
ENDPOINT = "kserve_infer"


def _finish(reason: str) -> str:
    # Same vocabulary as the OpenAI API: the engine's own reasons (eos, abort) are not user-facing.
    return "stop" if reason in ("eos", "stop", "cancelled", "abort") else reason


def _status(exc: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode[errors.grpc_status(exc)]


class KServeService(pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 inference service. Every handler is a coroutine on the frontend's event loop."""

    def __init__(self, manager: ModelManager, metrics: FrontendMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    # -- health and metadata -------------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        # Ready once some text model can take requests, as /health is healthy once workers are up.
        return pb.ServerReadyResponse(ready=any(self._ready(m) for m in self.manager.model_names(MODEL_TYPE)))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        # An unknown model is "not ready" rather than an error, as in Triton.
        return pb.ModelReadyResponse(ready=self._ready(request.name))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            self.manager.worker_set(request.name, MODEL_TYPE)
        except errors.DynamoError as exc:
            await context.abort(_status(exc), str(exc))
        t = pb.ModelMetadataResponse.TensorMetadata
        inputs = [t(name=TEXT_INPUT, datatype="BYTES", shape=[1]), t(name="streaming", datatype="BOOL", shape=[1])]
        inputs += [t(name=name, datatype=types[0], shape=[-1 if name == "stop" else 1])
                   for name, types in SAMPLING.items()]
        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform=PLATFORM, inputs=inputs,
            outputs=[t(name=TEXT_OUTPUT, datatype="BYTES", shape=[1]),
                     t(name=FINISH_REASON, datatype="BYTES", shape=[1])])

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            ws = self.manager.worker_set(request.name, MODEL_TYPE)
        except errors.DynamoError as exc:
            await context.abort(_status(exc), str(exc))
        config = mc.ModelConfig(
            name=request.name, platform=PLATFORM, backend=PLATFORM, max_batch_size=0,
            input=[mc.ModelInput(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1]),
                   mc.ModelInput(name="streaming", data_type=mc.TYPE_BOOL, dims=[1], optional=True)],
            output=[mc.ModelOutput(name=TEXT_OUTPUT, data_type=mc.TYPE_STRING, dims=[1]),
                    mc.ModelOutput(name=FINISH_REASON, data_type=mc.TYPE_STRING, dims=[1])],
            # Streaming responses are "decoupled" in Triton's terms: many responses per request.
            model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        )
        config.parameters["context_length"].string_value = str(ws.card.context_length)
        return pb.ModelConfigResponse(config=config)

    def _ready(self, model: str) -> bool:
        try:
            return self.manager.worker_set(model, MODEL_TYPE).engine is not None
        except errors.DynamoError:
            return False

    # -- inference ------------------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            text_parts: list[str] = []
            finish = "stop"
            rid = request.id or uuid.uuid4().hex
            async for text, fr in self._generate(request.model_name, decode_request(request), rid, "unary"):
                text_parts.append(text)
                if fr is not None:
                    finish = fr
            return encode_response(pb, request.model_name, request.id, "".join(text_parts), finish, final=True)
        except errors.DynamoError as exc:
            await context.abort(_status(exc), str(exc))
        except Exception as exc:
            logger.exception("ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently; their responses interleave, told apart by ``id``."""
        out: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        done = object()

        async def one(req: Any) -> None:
            rid = req.id or uuid.uuid4().hex
            try:
                decoded = decode_request(req)
                parts: list[str] = []
                async for text, fr in self._generate(req.model_name, decoded, rid, "stream"):
                    if decoded.streaming:
                        if text or fr is not None:
                            await out.put(pb.ModelStreamInferResponse(infer_response=encode_response(
                                pb, req.model_name, req.id, text, fr, final=fr is not None)))
                    else:
                        parts.append(text)
                        if fr is not None:
                            await out.put(pb.ModelStreamInferResponse(infer_response=encode_response(
                                pb, req.model_name, req.id, "".join(parts), fr, final=True)))
            except Exception as exc:
                if not isinstance(exc, errors.DynamoError):
                    logger.exception("ModelStreamInfer request %s failed", rid)
                    exc = errors.Internal(f"internal error: {type(exc).__name__}")
                await out.put(pb.ModelStreamInferResponse(
                    error_message=f"{errors.grpc_status(exc)}: {exc}",
                    infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id)))

        async def read() -> None:
            try:
                async for req in request_iterator:
                    task = asyncio.get_running_loop().create_task(one(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                # The client closed its side: finish what it asked for, then end the stream.
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await out.put(done)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await out.get()) is not done:
                yield item
        finally:
            # The client went away (or the server stops): stop every request still generating.
            reader.cancel()
            for t in list(tasks):
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _generate(self, model_name: str, decoded: TextRequest, rid: str,
                        request_type: str) -> AsyncIterator[tuple[str, str | None]]:
        """Run one KServe request through the model's pipeline: ``(text, finish_reason)`` per step."""
        if not model_name:
            raise errors.InvalidArgument("model_name is required")
        try:
            req = oai.CompletionRequest.model_validate(decoded.body)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise errors.InvalidArgument(f"{where}: {first.get('msg')}") from None
        engine = self._engine(req.model)
        model = engine.model
        m = self.metrics
        mm = m.for_model(model)
        pres = await engine.preprocess_completion(req, rid)
        pre = pres[0]
        start = time.perf_counter()
        status, error_type = "success", ""
        total = 0
        mm.inflight.inc()
        stream = engine.choice_stream(pre)
        try:
            async for res in stream:
                total += res.num_tokens
                yield res.text or "", _finish(res.finish_reason) if res.finish_reason is not None else None
            mm.isl.observe(pre.prompt_tokens)
            mm.osl.observe(total)
            mm.output_tokens.inc(total)
        except GeneratorExit:
            raise
        except BaseException as exc:
            status, error_type = "error", type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                mm.cancellations.inc()
            elif isinstance(exc, errors.ResourceExhausted):
                m.rejections.labels(model, ENDPOINT).inc()
            raise
        finally:
            await stream.aclose()
            mm.inflight.dec()
            mm.duration.observe(time.perf_counter() - start)
            m.requests.labels(model, ENDPOINT, request_type, status, error_type).inc()

    def _engine(self, model: str) -> ModelEngine:
        ws = self.manager.worker_set(model, MODEL_TYPE)
        if ws.engine is None:
            raise errors.Unavailable(f"model '{model}' is still loading")
        return ws.engine


async def start_grpc_server(manager: ModelManager, metrics: FrontendMetrics, host: str, port: int) -> tuple[Any, int]:
    """Start the KServe server on the running loop; returns the server and the port it is bound to."""
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(KServeService(manager, metrics), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise errors.ConfigError(f"cannot bind the KServe gRPC server to {host}:{port}")
    await server.start()
    return server, bound
