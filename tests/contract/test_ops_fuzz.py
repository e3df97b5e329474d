"""Property-based fuzzing of the operations API through the real edge: no 5xx, every answer as documented."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orchestra_server.edge import EnvoyProcess, Upstream
from tests.contract.conftest import Service, start_edge
from tests.contract.helpers import Consumer
from tests.contract.test_fuzz import CHECKS, is_negative

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "contract" / "orchestra-ops.openapi.yaml"
EXAMPLES_PER_OPERATION = int(os.environ.get("ORCHESTRA_FUZZ_EXAMPLES", "100"))

schema = schemathesis.openapi.from_path(CONTRACT)


@pytest.fixture(scope="module")
def ops_fuzz_edge(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    edge = start_edge(
        tmp_path_factory.mktemp("ops-fuzz-edge"),
        (Upstream("127.0.0.1", service.port),),
        tenant_rate_limit=None,
    )
    yield edge
    edge.stop()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_operations_contract_holds_under_fuzzing(
    case: Any, ops_fuzz_edge: EnvoyProcess, acme_operator: Consumer
) -> None:
    response = case.call(base_url=ops_fuzz_edge.rest_url, headers=acme_operator.headers)
    if is_negative(case) and response.status_code >= 400:
        # Input outside the contract is refused cleanly: a 4xx in the contract's error shape.
        assert response.status_code < 500, (response.status_code, response.text)
        body = response.json()
        assert isinstance(body, dict)
        assert set(body) == {"error"}
        assert response.headers["cache-control"] == ["no-store"]
        return
    case.validate_response(response, checks=CHECKS)
