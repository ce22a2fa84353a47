"""The OpenAPI 3.1 document, built once from the same pydantic models that validate requests.

Request schemas go under ``components/schemas`` and every ``$ref`` points there, so tools that follow
references (client generators, schemathesis) see the request bodies. Each operation lists every
status it can answer with, and the content type of each, since tools check answers against that.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

import dynamo
from dynamo.llm.protocols import openai as oai
from dynamo.llm.protocols import responses as oai_responses

REF = "#/components/schemas/{model}"

#: the error body of every non-2xx answer (``http/errors.py``)
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": "integer"}},
    }},
}

_OBJECT: dict[str, Any] = {"type": "object"}
_JSON_OBJECT = {"application/json": {"schema": _OBJECT}}
#: one server-sent event: ``data`` is a JSON chunk or ``[DONE]``; ``event`` names Responses API events
#: and mid-stream errors
_SSE = {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(
        model="Error")}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request (the message names the parameter)", 401: "Missing or wrong admin token",
            403: "Disabled on this frontend", 404: "Unknown model, or no model of this type registered yet",
            405: "Method not allowed (see the Allow header)", 413: "Request body too large",
            499: "Client closed the request", 501: "Not implemented",
            503: "Model loading, no worker available, or all workers busy"}
    return {str(c): _error(text[c]) for c in codes}


_GENERATE_ERRORS = _errors(400, 404, 413, 501, 503)


def _generate(summary: str, schema_name: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "$ref": REF.format(model=schema_name)}}}},
        "responses": {"200": {"description": "The response (JSON), or its server-sent events when stream is true",
                              "content": {**_JSON_OBJECT, **_SSE}},
                      **_GENERATE_ERRORS},
    }}


def _get(summary: str, content: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK",
                                                              "content": content or _JSON_OBJECT}}, **extra}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(oai.ChatCompletionRequest, "validation"), (oai.CompletionRequest, "validation"),
         (oai_responses.ResponsesRequest, "validation")],
        ref_template=REF,
    )
    schemas = {**defs["$defs"], "Error": ERROR_SCHEMA}
    busy = _get("Busy thresholds per model")
    busy["get"]["responses"].update(_errors(501))
    busy["post"] = {
        "summary": "Set a model's busy thresholds (needs --admin-token)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}}}}},
        "responses": {"200": {"description": "The model's thresholds now", "content": _JSON_OBJECT},
                      **_errors(400, 401, 403, 413, 501)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dynamo-Py frontend", "version": dynamo.__version__,
                 "description": "OpenAI-compatible API (chat, completions, responses) over Dynamo workers."},
        "paths": {
            "/v1/chat/completions": _generate("Chat completion", "ChatCompletionRequest"),
            "/v1/completions": _generate("Text completion", "CompletionRequest"),
            "/v1/responses": _generate("Response (OpenAI Responses API, on the chat pipeline)", "ResponsesRequest"),
            "/v1/models": _get("List models"),
            "/health": _get("Instances and endpoints"),
            "/live": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "Live", "content": _JSON_OBJECT},
                "503": {"description": "Shutting down", "content": _JSON_OBJECT}}}},
            "/metrics": _get("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}}),
            "/openapi.json": _get("This document"),
            "/busy_threshold": busy,
        },
        "components": {"schemas": schemas},
    }
