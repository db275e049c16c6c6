"""Property-based tests over the OpenAPI schema (schemathesis), on both databases: no request
makes the service answer 5xx, and every answer conforms to the schema (status, content type,
body), for valid requests and for invalid ones alike."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_fixtures import Signer, Tokens
from service_helpers import envelope_json, image, observation

from lockd.server.app import create_app
from lockd.server.settings import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(settings: Settings, tokens: Tokens, signer: Signer) -> Any:
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Something stored, so reads answer with real records too.
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        client.post(
            "/v1/manifests",
            json=envelope_json(signer.key, observation(image(1))),
            headers=tokens.header("recorder"),
        )
    return schema


def test_no_5xx_and_answers_conform_to_the_schema(api_schema: Any, tokens: Tokens) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            case.call_and_validate(headers=tokens.header("admin"), checks=CHECKS)

        try:
            call()
        except Unsatisfiable:
            # No invalid request exists for an operation without inputs (GET /healthz).
            assert mode is GenerationMode.NEGATIVE
            assert not operation.path_parameters and not operation.query and not operation.body
