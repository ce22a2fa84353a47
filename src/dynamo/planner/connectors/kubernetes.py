"""Kubernetes connector (reference §7.3, seed 002): scale the services of the parent
DynamoGraphDeployment (DGD) through its DynamoGraphDeploymentScalingAdapters (DGDSA), with the official
``kubernetes`` client.

* The parent DGD is named by ``DYN_PARENT_DGD_K8S_NAME``, in the pod's namespace (``POD_NAMESPACE``
  or the service account's namespace file, else ``default``).
* A pool's service is the one whose ``subComponentType`` is ``prefill``/``decode``, else the one named
  by ``--prefill-component``/``--decode-component``.
* Scaling patches the adapter's ``scale`` subresource (``{dgd}-{service lowercased}``, body
  ``{"spec": {"replicas": N}}``); when the adapter does not exist (404) it patches
  ``spec.services[svc].replicas`` of the DGD instead.
* Ready when every scaled service's status reports ``replicas == updatedReplicas == readyReplicas``
  (``availableReplicas`` accepted for ``readyReplicas``) for the desired count.

The client is synchronous; every call runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from dynamo.planner.connectors.base import Connector, TargetReplica
from dynamo.runtime.errors import ConfigError, NotFound, Unavailable

logger = logging.getLogger(__name__)

GROUP = "nvidia.com"
VERSION = "v1alpha1"
DGD_PLURAL = "dynamographdeployments"
DGDSA_PLURAL = "dynamographdeploymentscalingadapters"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if SA_NAMESPACE_FILE.is_file():
        return SA_NAMESPACE_FILE.read_text().strip()
    return "default"


def adapter_name(dgd: str, service: str) -> str:
    return f"{dgd}-{service.lower()}"


def resolve_service(dgd: dict[str, Any], sub_component_type: str, fallback_name: str | None) -> str:
    """The DGD service for a pool: by ``subComponentType``, then by name."""
    services: dict[str, Any] = dgd.get("spec", {}).get("services", {}) or {}
    for name, svc in services.items():
        if (svc or {}).get("subComponentType") == sub_component_type:
            return name
    if fallback_name and fallback_name in services:
        return fallback_name
    raise NotFound(f"DynamoGraphDeployment {dgd.get('metadata', {}).get('name')!r} has no service with "
                   f"subComponentType {sub_component_type!r}" + (f" or named {fallback_name!r}" if fallback_name else ""))


def service_ready(dgd: dict[str, Any], service: str, desired: int) -> bool:
    status = ((dgd.get("status") or {}).get("services") or {}).get(service) or {}
    ready = status.get("readyReplicas", status.get("availableReplicas"))
    return status.get("replicas") == desired and status.get("updatedReplicas") == desired and ready == desired


class KubernetesConnector(Connector):
    name = "kubernetes"

    def __init__(self, dgd_name: str | None = None, namespace: str | None = None, api_client: Any = None,
                 component_names: dict[str, str] | None = None) -> None:
        self.dgd_name = dgd_name or os.environ.get("DYN_PARENT_DGD_K8S_NAME") or ""
        if not self.dgd_name:
            raise ConfigError("--environment kubernetes needs DYN_PARENT_DGD_K8S_NAME (the parent "
                              "DynamoGraphDeployment)")
        self.namespace = namespace or pod_namespace()
        self.component_names = component_names or {}
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise ConfigError("--environment kubernetes needs the 'kubernetes' package "
                              "(pip install 'dynamo-py[planner]')") from exc
        import urllib3

        self._exc = client.exceptions.ApiException
        self._transport_errors = urllib3.exceptions.HTTPError
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except Exception as exc:
                    raise ConfigError(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from exc
            api_client = client.ApiClient()
        self.api = client.CustomObjectsApi(api_client)
        self._desired: dict[str, int] = {}
        self._services: dict[str, str] = {}

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except self._exc as exc:
            if exc.status == 404:
                raise NotFound(f"Kubernetes: {exc.reason}") from exc
            raise Unavailable(f"Kubernetes API error {exc.status}: {exc.reason}") from exc
        except (OSError, self._transport_errors) as exc:
            raise Unavailable(f"Kubernetes API unreachable: {exc}") from exc

    async def get_dgd(self) -> dict[str, Any]:
        return await self._call(self.api.get_namespaced_custom_object, GROUP, VERSION, self.namespace, DGD_PLURAL,
                                self.dgd_name)

    async def start(self) -> None:
        dgd = await self.get_dgd()
        for sub in ("prefill", "decode"):
            try:
                self._services[sub] = resolve_service(dgd, sub, self.component_names.get(sub))
            except NotFound:
                continue
            replicas = (dgd["spec"]["services"][self._services[sub]] or {}).get("replicas", 1)
            self._desired[sub] = int(replicas)
        if not self._services:
            raise NotFound(f"DynamoGraphDeployment {self.dgd_name!r} has no prefill or decode service")
        logger.info("kubernetes connector: DGD %s/%s services %s", self.namespace, self.dgd_name, self._services)

    def service(self, sub: str, override: str | None = None) -> str:
        if override:
            return override
        try:
            return self._services[sub]
        except KeyError:
            raise NotFound(f"DynamoGraphDeployment {self.dgd_name!r} has no {sub} service") from None

    async def current_replicas(self) -> dict[str, int]:
        return dict(self._desired)

    async def scale_service(self, service: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        try:
            await self._call(self.api.patch_namespaced_custom_object_scale, GROUP, VERSION, self.namespace,
                             DGDSA_PLURAL, adapter_name(self.dgd_name, service), body)
        except NotFound:
            logger.info("no scaling adapter %s: patching the DGD", adapter_name(self.dgd_name, service))
            await self._call(self.api.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, DGD_PLURAL,
                             self.dgd_name, {"spec": {"services": {service: {"replicas": replicas}}}})

    async def set_component_replicas(self, targets: list[TargetReplica], blocking: bool = False) -> None:
        for t in targets:
            service = self.service(t.sub_component_type, t.component_name)
            if self._desired.get(t.sub_component_type) == t.desired_replicas:
                continue
            await self.scale_service(service, t.desired_replicas)
            self._desired[t.sub_component_type] = t.desired_replicas
        if blocking:
            await self.wait_ready()

    async def is_ready(self) -> bool:
        dgd = await self.get_dgd()
        return all(service_ready(dgd, self._services[sub], n) for sub, n in self._desired.items()
                   if sub in self._services)
