"""The OpenAPI document, built once from the request models."""

from __future__ import annotations

import functools
from typing import Any

import dynamo
from dynamo.llm.protocols import openai as oai


@functools.cache
def openapi_document() -> dict[str, Any]:
    def body(model: type[Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}

    ok = {"200": {"description": "OK"}}
    errors = {"400": {"description": "Invalid request"}, "404": {"description": "Unknown model"},
              "503": {"description": "No worker available or all busy"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dynamo-Py frontend", "version": dynamo.__version__},
        "paths": {
            "/v1/chat/completions": {"post": {"summary": "Chat completion", "requestBody":
                                              body(oai.ChatCompletionRequest), "responses": {**ok, **errors}}},
            "/v1/completions": {"post": {"summary": "Text completion", "requestBody": body(oai.CompletionRequest),
                                         "responses": {**ok, **errors}}},
            "/v1/models": {"get": {"summary": "List models", "responses": ok}},
            "/health": {"get": {"summary": "Instances and endpoints", "responses": ok}},
            "/live": {"get": {"summary": "Liveness", "responses": ok}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": ok}},
            "/busy_threshold": {"get": {"summary": "Busy thresholds", "responses": ok},
                                "post": {"summary": "Set busy thresholds", "responses": ok}},
        },
    }
