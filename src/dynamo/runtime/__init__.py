"""Distributed runtime: discovery, request plane, event plane."""

from dynamo.runtime.client import Client
from dynamo.runtime.component import Component, Endpoint, Namespace, ServedEndpoint
from dynamo.runtime.context import RequestContext
from dynamo.runtime.distributed import DistributedRuntime
from dynamo.runtime.naming import EndpointId

__all__ = [
    "Client",
    "Component",
    "DistributedRuntime",
    "Endpoint",
    "EndpointId",
    "Namespace",
    "RequestContext",
    "ServedEndpoint",
]
