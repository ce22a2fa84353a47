"""``/openapi.json`` against the live frontend: a valid OpenAPI 3.1 document whose references all
resolve, and schemathesis finding no server error and no answer the document does not describe on
the main routes (valid and invalid bodies, unknown and known models, unsupported methods)."""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.support.deploy import new_deployment

pytestmark = pytest.mark.e2e

MODEL = "Qwen3-0.6B"
#: examples per operation and mode; raise it (DYN_SCHEMATHESIS_EXAMPLES) for a longer hunt
EXAMPLES = int(os.environ.get("DYN_SCHEMATHESIS_EXAMPLES", "30"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection, unsupported_method]


@pytest.fixture(scope="module")
def deployment():
    dep = new_deployment()
    try:
        # a small context bounds what generated requests can ask of the mocker
        dep.mocker("--speedup-ratio", "1000", "--context-length", "256")
        dep.start_frontend()
        dep.wait_models({MODEL})
        yield dep
    finally:
        dep.close()


def _refs(node, found):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)
    return found


def test_document_is_openapi_31_and_every_reference_resolves(deployment):
    status, doc = deployment.get("/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    refs = _refs(doc, set())
    assert refs, "request bodies are described by reference"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/")


def test_405_carries_allow(deployment):
    r = httpx.put(deployment.url + "/busy_threshold", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = httpx.get(deployment.url + "/v1/chat/completions", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def _operations(deployment):
    api = schemathesis.openapi.from_url(deployment.url + "/openapi.json")
    ops = [result.ok() for result in api.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "GET /v1/models"}
    return ops


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_errors_or_undocumented_answers(deployment, mode):
    # schemathesis' pytest plugin does not load under this pytest; its hypothesis strategies do the same
    for op in _operations(deployment):
        if mode == GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # nothing to make invalid in a GET without parameters

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(checks=CHECKS, timeout=30)
            body = case.body
            if mode == GenerationMode.POSITIVE and isinstance(body, dict) and "model" in body:
                # the same valid body for the served model goes through preprocessing, routing and a worker
                case.body = {**body, "model": MODEL}
                case.call_and_validate(checks=CHECKS, timeout=30)

        check()
