"""The error hierarchy shared by every component.

Errors cross process boundaries as ``{"type": <class name>, "message": str}`` (see ``to_wire`` /
``from_wire``); HTTP status codes are assigned in exactly one place, ``http_status``, and gRPC status
codes (the KServe frontend) in ``grpc_status``.
"""

from __future__ import annotations

from typing import Any


class DynamoError(Exception):
    """Base of every error the runtime raises or carries on the wire."""

    #: whether request migration may retry a request that failed with this error
    migratable: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__name__

    def to_wire(self) -> dict[str, str]:
        return {"type": type(self).__name__, "message": self.message}

    def __str__(self) -> str:
        return self.message


class Unknown(DynamoError):
    """An error whose type the receiver does not know."""


class InvalidArgument(DynamoError):
    """The request is malformed or out of range (HTTP 400)."""


class NotFound(DynamoError):
    """Unknown model, endpoint or instance (HTTP 404)."""


class Unavailable(DynamoError):
    """No instance can serve the request right now (HTTP 503)."""


class ResourceExhausted(DynamoError):
    """The server is overloaded or every worker is busy (HTTP 503); never migrated."""


class Unsupported(DynamoError):
    """A feature the system does not implement (HTTP 501)."""


class Cancelled(DynamoError):
    """The request was cancelled by the client (HTTP 499); never migrated."""


class CannotConnect(DynamoError):
    """The transport could not reach the instance."""

    migratable = True


class Disconnected(DynamoError):
    """The connection to the instance was lost mid-stream: the migration trigger."""

    migratable = True


class ConnectionTimeout(DynamoError):
    """The instance did not acknowledge the request in time."""

    migratable = True


class EngineShutdown(DynamoError):
    """The engine is shutting down and will not finish the request."""

    migratable = True


class StreamStalled(Disconnected):
    """The worker kept the connection but stopped producing items."""


class Internal(DynamoError):
    """A bug or unexpected failure (HTTP 500)."""


class ConfigError(DynamoError):
    """Invalid configuration: bad flag combination, bad environment value."""


_BY_NAME: dict[str, type[DynamoError]] = {}


def _register(cls: type[DynamoError]) -> None:
    _BY_NAME[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(DynamoError)


def from_wire(data: Any) -> DynamoError:
    """Rebuild an error sent with :meth:`DynamoError.to_wire`; unknown types become ``Unknown``."""
    if isinstance(data, dict):
        cls = _BY_NAME.get(str(data.get("type")), Unknown)
        return cls(str(data.get("message", "")))
    return Unknown(str(data))


_HTTP_STATUS: dict[type[DynamoError], int] = {
    InvalidArgument: 400,
    NotFound: 404,
    Cancelled: 499,
    Unsupported: 501,
    Unavailable: 503,
    ResourceExhausted: 503,
    CannotConnect: 503,
    EngineShutdown: 503,
}


def http_status(error: BaseException) -> int:
    """The HTTP status for an error: the single place where that mapping lives."""
    if isinstance(error, DynamoError):
        for cls in type(error).__mro__:
            if cls in _HTTP_STATUS:
                return _HTTP_STATUS[cls]
    return 500


# gRPC canonical status names (``grpc.StatusCode[name]``): kept as strings so that the runtime does not
# import grpc, which only the KServe frontend needs.
_GRPC_STATUS: dict[type[DynamoError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    Cancelled: "CANCELLED",
    Unsupported: "UNIMPLEMENTED",
    Unavailable: "UNAVAILABLE",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    CannotConnect: "UNAVAILABLE",
    EngineShutdown: "UNAVAILABLE",
}


def grpc_status(error: BaseException) -> str:
    """The gRPC status code name for an error: the single place where that mapping lives."""
    if isinstance(error, DynamoError):
        for cls in type(error).__mro__:
            if cls in _GRPC_STATUS:
                return _GRPC_STATUS[cls]
    return "INTERNAL"
