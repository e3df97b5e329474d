"""Property-based fuzzing of the REST contract through the real edge: no 5xx, every answer as documented."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from orchestra_server.edge import EnvoyProcess, Upstream
from tests.contract.conftest import Service, start_edge
from tests.contract.helpers import Consumer

ROOT = Path(__file__).resolve().parents[2]
# The project's own copy of the REST contract: the suite never reads outside the repository.
CONTRACT = ROOT / "contract" / "orchestra-api.openapi.yaml"
EXAMPLES_PER_OPERATION = int(os.environ.get("ORCHESTRA_FUZZ_EXAMPLES", "100"))
# Every answer a consumer can get: no server error, a documented status, the documented
# content type and body schema.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]

schema = schemathesis.openapi.from_path(CONTRACT)


@pytest.fixture(scope="module")
def fuzz_edge(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    edge = start_edge(
        tmp_path_factory.mktemp("fuzz-edge"), (Upstream("127.0.0.1", service.port),), tenant_rate_limit=None
    )
    yield edge
    edge.stop()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_contract_holds_under_fuzzing(case: Any, fuzz_edge: EnvoyProcess, acme: Consumer) -> None:
    headers = {} if case.path == "/oauth/token" else {"authorization": f"Bearer {acme.token}"}
    response = case.call(base_url=fuzz_edge.rest_url, headers=headers)
    if case.path == "/oauth/token" and response.status_code == 400:
        # RFC 6749 requires 400 for a malformed token request (a parameter given twice, a
        # missing grant type) where the contract documents only 200 and 401.
        assert response.json() in ({"error": "invalid_request"}, {"error": "unsupported_grant_type"})
        return
    if case.path == "/oauth/token" and response.status_code == 429:
        # Guessing is throttled: after 5 failed secrets a minute for one client id (and past
        # a source address's bucket) the answer is 429 at once, in the contract's error shape,
        # as the edge's rate limits answer on every route.
        body = response.json()
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        assert response.headers["cache-control"] == ["no-store"]
        return
    if is_negative(case) and response.status_code >= 400:
        # Input outside the contract (unknown query parameters, wrong types, missing fields)
        # is refused cleanly: a 4xx in the contract's error shape, never a server error. (A
        # query string cannot always carry the wrong type: such cases may well succeed, and are
        # then held to the contract like any other answer.)
        assert response.status_code < 500, (response.status_code, response.text)
        body = response.json()
        assert isinstance(body, dict)
        assert set(body) == {"error"}
        assert response.headers["cache-control"] == ["no-store"]
        return
    case.validate_response(response, checks=CHECKS)


def is_negative(case: Any) -> bool:
    meta = case.meta if hasattr(case, "meta") else case._meta
    return meta is not None and bool(meta.generation.mode.is_negative)
