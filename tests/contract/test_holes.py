"""The holes the edge closes: raw gRPC on the REST port, body fields over path parameters,
unknown query parameters, oversized bodies, unknown paths, malformed JSON."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestra.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    orchestra_service_pb2,
    orchestra_service_pb2_grpc,
)

from orchestra_server.edge import EnvoyProcess
from tests.contract.helpers import Consumer, assert_error, assert_ok, get_instance, parked_tokens, start

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def rest_port_channel(edge: EnvoyProcess) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{edge.settings.rest_port}")


def _expect_unimplemented(call: object) -> None:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_raw_grpc_on_the_rest_port_finds_nothing(rest_port_channel: grpc.Channel, acme: Consumer) -> None:
    with rest_port_channel as channel:
        stub = orchestra_service_pb2_grpc.OrchestraServiceStub(channel)
        metadata = [("authorization", f"Bearer {acme.token}")]
        _expect_unimplemented(
            lambda: stub.ListInstances(orchestra_service_pb2.ListInstancesRequest(), timeout=5)
        )
        # Not even with a valid token.
        _expect_unimplemented(
            lambda: stub.ListInstances(
                orchestra_service_pb2.ListInstancesRequest(), timeout=5, metadata=metadata
            )
        )
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        _expect_unimplemented(lambda: auth.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=5))
        health = health_pb2_grpc.HealthStub(channel)
        _expect_unimplemented(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5))


def test_body_field_cannot_override_the_instance_path(http: httpx.Client, acme: Consumer) -> None:
    mine = start(http, acme, "three_step", {"v": "mine"})
    other = start(http, acme, "three_step", {"v": "other"})
    assert_error(
        http.request(
            "GET", f"/orchestra-api/instance/{mine}", json={"instance_id": other}, headers=acme.headers
        ),
        400,
    )
    response = http.put(
        f"/orchestra-api/instance/{mine}/variable/v",
        json={"value": "x", "instance_id": other},
        headers=acme.headers,
    )
    assert_error(response, 400)
    response = http.put(
        f"/orchestra-api/instance/{mine}/variable/v", json={"value": "x", "name": "w"}, headers=acme.headers
    )
    assert_error(response, 400)
    for instance_id, value in ((mine, "mine"), (other, "other")):
        variables = http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=acme.headers)
        assert assert_ok(variables) == {"v": value}


def test_body_field_cannot_override_the_token_path(http: httpx.Client, acme: Consumer) -> None:
    first = start(http, acme, "three_step")
    second = start(http, acme, "three_step")
    (first_token,) = parked_tokens(get_instance(http, acme, first))
    (second_token,) = parked_tokens(get_instance(http, acme, second))
    response = http.post(
        f"/orchestra-api/token/{first_token['id']}/signal",
        json={"token_id": second_token["id"]},
        headers=acme.headers,
    )
    assert_error(response, 400)
    assert get_instance(http, acme, first)["status"] == "running"
    assert get_instance(http, acme, second)["status"] == "running"


def test_body_field_cannot_override_the_definition_path(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/orchestra-api/process/three_step/start",
        json={"definition_id": "parallel_review"},
        headers=acme.headers,
    )
    assert_error(response, 400)


@pytest.mark.parametrize(
    "path",
    [
        "/orchestra-api/instances?unknown=1",
        "/orchestra-api/instance/x?unknown=1",
        "/orchestra-api/instance/x/variables?x=1",
    ],
)
def test_unknown_query_parameter_is_400(http: httpx.Client, acme: Consumer, path: str) -> None:
    assert_error(http.get(path, headers=acme.headers), 400)


def test_oversized_body_is_413(http: httpx.Client, acme: Consumer) -> None:
    big = "x" * (3 * 1024 * 1024)
    response = http.post(
        "/orchestra-api/process/three_step/start", json={"variables": {"big": big}}, headers=acme.headers
    )
    assert_error(response, 413)


def test_oversized_token_request_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/oauth/token",
        content=b"a" * (3 * 1024 * 1024),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 413)


def test_malformed_json_is_400(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/orchestra-api/process/three_step/start",
        content=b'{"variables": {',
        headers={**acme.headers, "content-type": "application/json"},
    )
    error = assert_error(response, 400)
    # Envoy's parser messages quote the input; the edge does not echo it.
    assert "variables" not in error


@pytest.mark.parametrize(
    "path", ["/", "/nothing", "/orchestra.v1.OrchestraService/ListInstances", "/oauth/token/x"]
)
def test_unknown_path_is_404(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404)


def test_unknown_api_path_is_404_with_a_token(http: httpx.Client, acme: Consumer) -> None:
    assert_error(http.get("/orchestra-api/nothing", headers=acme.headers), 404)
    assert_error(http.delete("/orchestra-api/instance/x", headers=acme.headers), 404)


def test_wrong_method_is_an_error(http: httpx.Client) -> None:
    response = http.get("/oauth/token")
    assert response.status_code in (404, 405)
    assert_error(response, response.status_code)
