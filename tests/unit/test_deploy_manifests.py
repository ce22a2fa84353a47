"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors), workers probe their status server, and the compose file runs
etcd and NATS with JetStream."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.31.0"


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


DOCS = documents()


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[name for name, _ in DOCS])
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_an_invalid_manifest_is_caught():
    # The validator really checks: a probe with a misspelt field fails.
    doc = next(d for name, d in DOCS if name.startswith("mocker.yaml"))
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/health"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["dynamo-mocker", "dynamo-vllm"])
def test_workers_probe_their_status_server(name):
    doc = next(d for _, d in DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = int(env["DYN_SYSTEM_PORT"])
    assert env["DYN_SYSTEM_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "system"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "system"}
    assert ports["system"] == port
    # Multi-host: the worker must advertise its pod address, not a loopback one.
    advertise = next(e for e in container["env"] if e["name"] == "DYN_TCP_RPC_ADVERTISE_HOST")
    assert advertise["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_compose_runs_etcd_and_nats_with_jetstream():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"etcd", "nats"}
    assert "-js" in services["nats"]["command"]
    assert "2379:2379" in services["etcd"]["ports"] and "4222:4222" in services["nats"]["ports"]
