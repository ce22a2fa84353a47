"""Planner connectors: the virtual round trip through a real file store (two runtimes, as planner and
orchestrator would be), and the Kubernetes connector with the official client against a local HTTP
server speaking the DGD / scaling-adapter calls (no cluster can run here)."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.planner.connectors import TargetReplica
from dynamo.planner.connectors.kubernetes import KubernetesConnector
from dynamo.planner.connectors.virtual import VirtualConnector, VirtualConnectorClient
from dynamo.runtime.discovery.file import FileStore
from dynamo.runtime.errors import ConfigError, NotFound, Unavailable
from tests.support.fake_kube import FakeKube, sample_dgd
from tests.support.procs import async_wait_for, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def two_stores(file_store_dir):
    a, b = FileStore(root=file_store_dir), FileStore(root=file_store_dir)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def test_virtual_round_trip(two_stores):
    planner_store, orch_store = two_stores
    conn = VirtualConnector(planner_store, "ns1", max_wait_s=60)
    await conn.start()
    assert await conn.is_ready()  # nothing asked yet
    client = VirtualConnectorClient(orch_store, "ns1")
    waiter = asyncio.create_task(client.wait(timeout=10))
    await conn.set_component_replicas([TargetReplica("prefill", 2), TargetReplica("decode", 3)])
    decision = await waiter
    assert decision.decision_id == 1
    assert decision.replicas == {"prefill": 2, "decode": 3}
    assert not await conn.is_ready()  # pending until acknowledged
    await conn.set_component_replicas([TargetReplica("prefill", 2), TargetReplica("decode", 3)])
    assert conn.decision_id == 1  # the same target again is not a new decision
    await client.complete(decision)
    assert await conn.is_ready()
    assert await conn.current_replicas() == {"prefill": 2, "decode": 3}
    # the next one carries a higher id; a restarted planner continues the sequence
    await conn.add_component("decode")
    assert (await client.wait(timeout=10)).decision_id == 2
    again = VirtualConnector(planner_store, "ns1")
    await again.start()
    assert again.decision_id == 2 and await again.current_replicas() == {"prefill": 2, "decode": 4}


async def test_virtual_proceeds_after_max_wait(two_stores):
    now = [0.0]
    conn = VirtualConnector(two_stores[0], "ns2", max_wait_s=30, clock=lambda: now[0])
    await conn.start()
    await conn.set_component_replicas([TargetReplica("decode", 2)])
    assert not await conn.is_ready()
    now[0] = 29.0
    assert not await conn.is_ready()
    now[0] = 30.0
    assert await conn.is_ready()


@pytest.fixture
def kube():
    fake = FakeKube("team-a", sample_dgd()).start()
    fake.rollout()
    yield fake
    fake.stop()


def api_client(url: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


async def test_kubernetes_scales_through_the_adapter_and_waits_for_rollout(kube):
    conn = KubernetesConnector("llama", "team-a", api_client(kube.url))
    await conn.start()
    assert await conn.current_replicas() == {"prefill": 1, "decode": 1}
    assert await conn.is_ready()
    await conn.set_component_replicas([TargetReplica("decode", 3)])
    patch = [c for c in kube.calls if c[0] == "PATCH"]
    assert patch == [("PATCH", "/apis/nvidia.com/v1alpha1/namespaces/team-a/dynamographdeploymentscalingadapters/"
                               "llama-vllmdecodeworker/scale", {"spec": {"replicas": 3}})]
    assert not await conn.is_ready()  # the operator has not rolled it out yet
    kube.rollout()
    assert await conn.is_ready()
    await conn.set_component_replicas([TargetReplica("decode", 3)])
    assert len([c for c in kube.calls if c[0] == "PATCH"]) == 1  # idempotent


async def test_kubernetes_falls_back_to_patching_the_dgd(kube):
    kube.adapters = False
    conn = KubernetesConnector("llama", "team-a", api_client(kube.url))
    await conn.start()
    waiter = asyncio.create_task(conn.set_component_replicas([TargetReplica("prefill", 2)], blocking=True))
    await async_wait_for(lambda: kube.dgd["spec"]["services"]["VllmPrefillWorker"]["replicas"] == 2, 10,
                         what="the DGD patch")
    assert ("PATCH", "/apis/nvidia.com/v1alpha1/namespaces/team-a/dynamographdeployments/llama",
            {"spec": {"services": {"VllmPrefillWorker": {"replicas": 2}}}}) in kube.calls
    assert not waiter.done()  # blocking: waits for the rollout
    kube.rollout()
    await asyncio.wait_for(waiter, 10)


async def test_kubernetes_errors_are_clear(kube, monkeypatch):
    monkeypatch.delenv("DYN_PARENT_DGD_K8S_NAME", raising=False)
    with pytest.raises(ConfigError, match="DYN_PARENT_DGD_K8S_NAME"):
        KubernetesConnector(None, "team-a", api_client(kube.url))
    with pytest.raises(NotFound):
        await KubernetesConnector("nope", "team-a", api_client(kube.url)).start()
    with pytest.raises(Unavailable, match="unreachable"):
        await KubernetesConnector("llama", "team-a", api_client(f"http://127.0.0.1:{free_port()}")).start()
