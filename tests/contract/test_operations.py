"""Every /orchestra-api operation through the edge: statuses, exact shapes, headers."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.contract.conftest import TENANT_A
from tests.contract.helpers import Consumer, assert_error, assert_ok, get_instance, parked_tokens, start

pytestmark = pytest.mark.timeout(120)

# The contract's properties, then the extra ones the contract allows: the definition version
# and times; on tokens, since when they rest (incident properties only on incidents).
INSTANCE_KEYS = {
    "id",
    "definition_id",
    "status",
    "tenant_id",
    "tokens",
    "definition_version",
    "started_at",
    "updated_at",
}
TOKEN_KEYS = {"id", "node_id", "status", "since"}
SUMMARY_KEYS = {"id", "definition_id", "status"}
PAGE_TOKEN = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _signal(http: httpx.Client, consumer: Consumer, token_id: str) -> httpx.Response:
    return http.post(f"/orchestra-api/token/{token_id}/signal", headers=consumer.headers)


def _set(http: httpx.Client, consumer: Consumer, instance_id: str, name: str, body: Any) -> httpx.Response:
    return http.put(
        f"/orchestra-api/instance/{instance_id}/variable/{name}", json=body, headers=consumer.headers
    )


def _variables(http: httpx.Client, consumer: Consumer, instance_id: str) -> Any:
    return assert_ok(http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=consumer.headers))


def test_start_answers_201_with_the_instance_id(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    assert get_instance(http, acme, instance_id)["id"] == instance_id


def test_start_without_a_body(http: httpx.Client, acme: Consumer) -> None:
    response = http.post("/orchestra-api/process/three_step/start", headers=acme.headers)
    assert set(assert_ok(response, 201)) == {"instance_id"}


def test_get_instance_is_the_bare_instance(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    instance = get_instance(http, acme, instance_id)
    assert set(instance) == INSTANCE_KEYS
    assert instance["id"] == instance_id
    assert instance["definition_id"] == "three_step"
    assert instance["status"] == "running"
    assert instance["tenant_id"] == TENANT_A
    assert [token["node_id"] for token in instance["tokens"]] == ["task"]
    for token in instance["tokens"]:
        assert set(token) == TOKEN_KEYS
    assert instance["tokens"][0]["status"] == "parked"


def test_signal_advances_the_instance(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    (token,) = parked_tokens(get_instance(http, acme, instance_id))
    assert assert_ok(_signal(http, acme, token["id"])) == {"status": "signalled"}
    instance = get_instance(http, acme, instance_id)
    assert instance["status"] == "completed"
    assert instance["tokens"] == []
    # A consumed token is not parked any more.
    assert_error(_signal(http, acme, token["id"]), 422)


def test_signal_unknown_token_is_422(http: httpx.Client, acme: Consumer) -> None:
    assert_error(_signal(http, acme, "no-such-token"), 422)


def test_parallel_fork_parks_several_tokens(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "parallel_review")
    tokens = parked_tokens(get_instance(http, acme, instance_id))
    assert len(tokens) >= 2
    assert len({token["node_id"] for token in tokens}) == len(tokens)


def test_exclusive_routing_follows_the_amount(http: httpx.Client, acme: Consumer) -> None:
    small = get_instance(http, acme, start(http, acme, "expense_approval", {"amount": 10}))
    large = get_instance(http, acme, start(http, acme, "expense_approval", {"amount": 1_000_000}))
    assert {t["node_id"] for t in small["tokens"]} != {t["node_id"] for t in large["tokens"]}


def test_initial_variables_round_trip(http: httpx.Client, acme: Consumer) -> None:
    variables = {
        "amount": 42,
        "note": "café",
        "ok": True,
        "nothing": None,
        "list": [1, "two", None],
        "obj": {"a": {}},
    }
    instance_id = start(http, acme, "three_step", variables)
    assert _variables(http, acme, instance_id) == variables


def test_get_variables_of_a_fresh_instance_is_an_empty_object(http: httpx.Client, acme: Consumer) -> None:
    response = http.get(
        f"/orchestra-api/instance/{start(http, acme, 'three_step')}/variables", headers=acme.headers
    )
    assert assert_ok(response) == {}
    assert response.text.strip() == "{}"


def test_get_variables_of_an_unknown_instance_is_an_empty_object(http: httpx.Client, acme: Consumer) -> None:
    assert _variables(http, acme, "no-such-instance") == {}


@pytest.mark.parametrize("value", [7, 2.5, "text", True, None, [1, [2]], {"k": {"n": [None]}}])
def test_set_variable_stores_any_json_value(http: httpx.Client, acme: Consumer, value: Any) -> None:
    instance_id = start(http, acme, "three_step", {"kept": 1})
    assert assert_ok(_set(http, acme, instance_id, "v", {"value": value})) == {"status": "set"}
    assert _variables(http, acme, instance_id) == {"kept": 1, "v": value}


def test_set_variable_replaces(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step", {"v": 1})
    assert_ok(_set(http, acme, instance_id, "v", {"value": 2}))
    assert _variables(http, acme, instance_id) == {"v": 2}


def test_set_variable_without_value_is_400(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    assert_error(_set(http, acme, instance_id, "v", {}), 400)
    assert _variables(http, acme, instance_id) == {}


def test_set_variable_with_a_bad_name_is_400(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    assert_error(_set(http, acme, instance_id, "1bad", {"value": 1}), 400)


def test_set_variable_on_a_completed_instance_is_422(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    (token,) = parked_tokens(get_instance(http, acme, instance_id))
    assert_ok(_signal(http, acme, token["id"]))
    assert_error(_set(http, acme, instance_id, "v", {"value": 1}), 422)


def test_set_variable_on_an_unknown_instance_is_422(http: httpx.Client, acme: Consumer) -> None:
    assert_error(_set(http, acme, "no-such-instance", "v", {"value": 1}), 422)


def test_get_unknown_instance_is_404(http: httpx.Client, acme: Consumer) -> None:
    assert_error(http.get("/orchestra-api/instance/no-such-instance", headers=acme.headers), 404)


def test_start_unknown_definition_is_422(http: httpx.Client, acme: Consumer) -> None:
    response = http.post("/orchestra-api/process/no_such_definition/start", json={}, headers=acme.headers)
    assert_error(response, 422)


def test_start_with_a_wrongly_typed_body_is_400(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/orchestra-api/process/three_step/start", json={"variables": 5}, headers=acme.headers
    )
    assert_error(response, 400)


def test_start_with_a_value_over_the_service_limit_is_400(http: httpx.Client, acme: Consumer) -> None:
    # Under the edge's body limit, over the service's 1 MiB per variable.
    big = "x" * (1536 * 1024)
    response = http.post(
        "/orchestra-api/process/three_step/start", json={"variables": {"big": big}}, headers=acme.headers
    )
    assert_error(response, 400)


def test_list_instances_is_a_bare_array_newest_first(http: httpx.Client, acme: Consumer) -> None:
    first = start(http, acme, "three_step")
    second = start(http, acme, "three_step")
    response = http.get("/orchestra-api/instances", headers=acme.headers)
    items = assert_ok(response)
    assert isinstance(items, list)
    for item in items:
        assert set(item) == SUMMARY_KEYS
    ids = [item["id"] for item in items]
    assert ids.index(second) < ids.index(first)


def test_list_instances_filters(http: httpx.Client, acme: Consumer) -> None:
    routed = start(http, acme, "expense_approval", {"amount": 10})
    running = start(http, acme, "three_step")
    done = start(http, acme, "three_step")
    (token,) = parked_tokens(get_instance(http, acme, done))
    assert_ok(_signal(http, acme, token["id"]))

    by_definition = assert_ok(
        http.get("/orchestra-api/instances", params={"definition_id": "three_step"}, headers=acme.headers)
    )
    assert {item["definition_id"] for item in by_definition} == {"three_step"}
    assert routed not in {item["id"] for item in by_definition}

    completed = assert_ok(
        http.get(
            "/orchestra-api/instances",
            params={"definition_id": "three_step", "status": "completed"},
            headers=acme.headers,
        )
    )
    ids = {item["id"] for item in completed}
    assert done in ids
    assert running not in ids
    assert {item["status"] for item in completed} == {"completed"}


def test_list_instances_pages_with_the_header(http: httpx.Client, acme: Consumer) -> None:
    for _ in range(3):
        start(http, acme, "three_step")
    seen: list[str] = []
    params: dict[str, str | int] = {"page_size": 2}
    for _ in range(100):
        response = http.get("/orchestra-api/instances", params=params, headers=acme.headers)
        page = assert_ok(response)
        assert isinstance(page, list)
        assert len(page) <= 2
        seen += [item["id"] for item in page]
        token = response.headers.get("x-next-page-token")
        if token is None:
            break
        assert PAGE_TOKEN.fullmatch(token), token
        assert page
        params = {"page_size": 2, "page_token": token}
    else:
        pytest.fail("paging did not end")
    assert len(seen) == len(set(seen))
    everything = assert_ok(
        http.get("/orchestra-api/instances", params={"page_size": 1000}, headers=acme.headers)
    )
    assert seen == [item["id"] for item in everything]


def test_bad_page_token_is_400(http: httpx.Client, acme: Consumer) -> None:
    response = http.get(
        "/orchestra-api/instances", params={"page_token": "bm90LWEtdG9rZW4"}, headers=acme.headers
    )
    assert_error(response, 400)


def test_page_size_out_of_range_is_400(http: httpx.Client, acme: Consumer) -> None:
    assert_error(http.get("/orchestra-api/instances", params={"page_size": 5000}, headers=acme.headers), 400)


def test_ping_is_the_authenticated_no_op(http: httpx.Client, acme: Consumer) -> None:
    assert assert_ok(http.get("/orchestra-api/ping", headers=acme.headers)) == {
        "status": "ok",
        "tenant_id": TENANT_A,
    }
    assert_error(http.get("/orchestra-api/ping"), 401)
