"""Errors → HTTP responses: the one place where error types meet status codes and bodies."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from dynamo.llm.protocols.openai import error_body, validation_error_to_openai
from dynamo.runtime import errors

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    499: "cancelled",
    501: "not_implemented",
    503: "service_unavailable",
    500: "internal_error",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """``headers``: extra response headers the status calls for (``Allow`` on a 405)."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or []


def to_http(exc: BaseException) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ValidationError):
        message, param = validation_error_to_openai(exc)
        return HttpError(400, message, param)
    if isinstance(exc, errors.DynamoError):
        status = errors.http_status(exc)
        return HttpError(status, exc.message)
    return HttpError(500, f"internal error: {type(exc).__name__}")


def body(err: HttpError) -> dict[str, Any]:
    return error_body(err.message, err.status, param=err.param, type=_TYPES.get(err.status), nested=True)


def json_bytes(err: HttpError) -> bytes:
    return orjson.dumps(body(err))
