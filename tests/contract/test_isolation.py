"""Tenant isolation through REST: another tenant's data answers exactly as missing data."""

from __future__ import annotations

import httpx
import pytest

from tests.contract.conftest import B_ONLY_DEFINITION, TENANT_A, TENANT_B
from tests.contract.helpers import Consumer, assert_error, assert_ok, get_instance, parked_tokens, start

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def acme_instance(http: httpx.Client, acme: Consumer) -> str:
    return start(http, acme, "three_step", {"secret": "acme only"})


def test_get_instance_of_another_tenant_is_404_like_a_missing_one(
    http: httpx.Client, acme_instance: str, globex: Consumer
) -> None:
    foreign = assert_error(http.get(f"/orchestra-api/instance/{acme_instance}", headers=globex.headers), 404)
    missing = assert_error(http.get("/orchestra-api/instance/no-such-instance", headers=globex.headers), 404)
    assert foreign == missing


def test_signal_in_another_tenant_is_422_and_changes_nothing(
    http: httpx.Client, acme: Consumer, acme_instance: str, globex: Consumer
) -> None:
    (token,) = parked_tokens(get_instance(http, acme, acme_instance))
    assert_error(http.post(f"/orchestra-api/token/{token['id']}/signal", headers=globex.headers), 422)
    assert parked_tokens(get_instance(http, acme, acme_instance)) == [token]


def test_set_variable_in_another_tenant_is_422_and_changes_nothing(
    http: httpx.Client, acme: Consumer, acme_instance: str, globex: Consumer
) -> None:
    response = http.put(
        f"/orchestra-api/instance/{acme_instance}/variable/secret",
        json={"value": "pwned"},
        headers=globex.headers,
    )
    assert_error(response, 422)
    variables = assert_ok(
        http.get(f"/orchestra-api/instance/{acme_instance}/variables", headers=acme.headers)
    )
    assert variables == {"secret": "acme only"}


def test_get_variables_of_another_tenant_is_empty(
    http: httpx.Client, acme_instance: str, globex: Consumer
) -> None:
    response = http.get(f"/orchestra-api/instance/{acme_instance}/variables", headers=globex.headers)
    assert assert_ok(response) == {}


def test_tenant_scoped_definition_of_another_tenant_is_422(
    http: httpx.Client, acme: Consumer, globex: Consumer
) -> None:
    # The owner can start it, so the 422 below is about the tenant.
    start(http, globex, B_ONLY_DEFINITION)
    response = http.post(f"/orchestra-api/process/{B_ONLY_DEFINITION}/start", json={}, headers=acme.headers)
    assert_error(response, 422)


def test_list_shows_only_the_own_tenant(
    http: httpx.Client, acme: Consumer, acme_instance: str, globex: Consumer
) -> None:
    globex_instance = start(http, globex, "three_step")
    globex_ids = {
        item["id"] for item in assert_ok(http.get("/orchestra-api/instances", headers=globex.headers))
    }
    acme_ids = {item["id"] for item in assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))}
    assert globex_instance in globex_ids
    assert acme_instance not in globex_ids
    assert globex_instance not in acme_ids
    assert acme_instance in acme_ids


def test_client_sent_tenant_header_is_ignored(http: httpx.Client, acme: Consumer, globex: Consumer) -> None:
    spoofed = {**acme.headers, "x-orchestra-tenant": TENANT_B}
    # Reading another tenant's instance with the header set is still refused...
    globex_instance = start(http, globex, "three_step")
    assert_error(http.get(f"/orchestra-api/instance/{globex_instance}", headers=spoofed), 404)
    # ...and what a spoofing caller creates lands in its own tenant.
    response = http.post("/orchestra-api/process/three_step/start", json={}, headers=spoofed)
    created = assert_ok(response, 201)["instance_id"]
    assert get_instance(http, acme, created)["tenant_id"] == TENANT_A
    assert_error(http.get(f"/orchestra-api/instance/{created}", headers=globex.headers), 404)
    listed = assert_ok(http.get("/orchestra-api/instances", headers=spoofed))
    assert globex_instance not in {item["id"] for item in listed}
