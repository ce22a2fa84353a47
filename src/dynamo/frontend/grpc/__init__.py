"""KServe v2 gRPC frontend (``--kserve-grpc-server``), served beside the HTTP API in the same process.

Needs the optional ``grpc`` extra (``grpcio`` and ``tritonclient[grpc]``, whose compiled KServe protos
the server uses); ``require_kserve`` turns its absence into a clear configuration error.
"""

from __future__ import annotations

from dynamo.runtime.errors import ConfigError

MISSING = ("--kserve-grpc-server needs the 'grpc' extra (grpcio and tritonclient[grpc]): "
           "pip install 'dynamo-py[grpc]'")


def require_kserve() -> None:
    """Raise ConfigError unless the packages the KServe server imports are installed."""
    try:
        import grpc  # noqa: F401
        import tritonclient.grpc.service_pb2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{MISSING} ({exc})") from None
