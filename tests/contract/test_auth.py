"""Bearer tokens at the edge: every bad token is a 401 `{"error": ...}` that never reaches the service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.api import httpbody_pb2
from orchestra.v1 import auth_service_pb2, auth_service_pb2_grpc

from orchestra_server.edge import EnvoyProcess
from tests.contract.conftest import Cli, Service
from tests.contract.helpers import Consumer, assert_error, assert_ok

pytestmark = pytest.mark.timeout(120)

API = "/orchestra-api/instances"


def _claims(consumer: Consumer) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(consumer.token, options={"verify_signature": False})
    return claims


def _forge(claims: dict[str, Any], kid: str) -> str:
    """Signed with a fresh key of our own, under the kid of a real key."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _part(data: dict[str, Any]) -> str:
    return _b64(json.dumps(data).encode())


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_part({'alg': 'none', 'typ': 'at+jwt'})}.{_part(claims)}."


def _call(http: httpx.Client, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return http.get(API, headers=headers)


def test_valid_token_passes(http: httpx.Client, acme: Consumer) -> None:
    assert_ok(_call(http, acme.token))


def test_missing_token_is_401(http: httpx.Client) -> None:
    response = _call(http, None)
    assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_other_scheme_is_401(http: httpx.Client, acme: Consumer) -> None:
    assert_error(http.get(API, headers={"authorization": f"Basic {acme.token}"}), 401)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "..", "eyJhbGciOiJFUzI1NiJ9.e30"])
def test_malformed_token_is_401(http: httpx.Client, token: str) -> None:
    assert_error(_call(http, token), 401)


def test_token_signed_by_another_key_is_401(http: httpx.Client, acme: Consumer) -> None:
    claims = _claims(acme)
    kid = jwt.get_unverified_header(acme.token)["kid"]
    assert_error(_call(http, _forge(claims, kid)), 401)


def test_tampered_claims_are_401(http: httpx.Client, acme: Consumer, globex: Consumer) -> None:
    header, _, signature = acme.token.split(".")
    payload = _part({**_claims(acme), "tenant_id": globex.tenant})
    assert_error(_call(http, f"{header}.{payload}.{signature}"), 401)


def test_expired_token_is_401(http: httpx.Client, acme: Consumer, edge: EnvoyProcess) -> None:
    before = _expiry_refusals(edge)
    now = int(time.time())
    claims = {**_claims(acme), "iat": now - 7200, "exp": now - 3600}
    token = _forge(claims, jwt.get_unverified_header(acme.token)["kid"])
    # The client learns only that the token is no good, as from the service.
    assert_error(_call(http, token), 401, "invalid access token")
    # Expiry is checked before the signature: the edge's log names the check that refused it.
    deadline = time.monotonic() + 5
    while _expiry_refusals(edge) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _expiry_refusals(edge) == before + 1


def _expiry_refusals(edge: EnvoyProcess) -> int:
    return edge.log_path.read_text(encoding="utf-8", errors="replace").count("Jwt_is_expired")


def test_alg_none_is_401(http: httpx.Client, acme: Consumer) -> None:
    assert_error(_call(http, _unsigned(_claims(acme))), 401)


def test_hmac_with_the_public_key_is_401(http: httpx.Client, acme: Consumer) -> None:
    # The classic confusion: the published key used as an HMAC secret.
    jwks = http.get("/.well-known/jwks.json").content
    kid = jwt.get_unverified_header(acme.token)["kid"]
    signing_input = f"{_part({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{_part(_claims(acme))}"
    signature = hmac.new(jwks, signing_input.encode(), hashlib.sha256).digest()
    assert_error(_call(http, f"{signing_input}.{_b64(signature)}"), 401)


def test_token_in_the_query_string_is_not_accepted(http: httpx.Client, acme: Consumer) -> None:
    response = http.get(API, params={"access_token": acme.token})
    assert response.status_code in (400, 401)
    assert_error(response, response.status_code)


def _issue_directly(service: Service, consumer: Consumer) -> str:
    """A token from a service instance, bypassing the edge."""
    form = (
        f"grant_type=client_credentials&client_id={consumer.client_id}&client_secret={consumer.client_secret}"
    )
    request = auth_service_pb2.IssueTokenRequest(
        http_body=httpbody_pb2.HttpBody(content_type="application/x-www-form-urlencoded", data=form.encode())
    )
    with grpc.insecure_channel(service.address) as channel:
        answer = auth_service_pb2_grpc.AuthServiceStub(channel).IssueToken(request, timeout=10)
    token = json.loads(answer.http_body.data)["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture(scope="module")
def foreign_service(
    cli: Cli, service: Service, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Starts a service on the same data (same keys) with another issuer or audience."""
    started: list[Service] = []

    def run(*args: str) -> Service:
        log = Path(tmp_path_factory.mktemp("foreign")) / "service.log"
        foreign = Service(cli, log, *args)
        started.append(foreign)
        return foreign

    yield run
    for foreign in started:
        foreign.stop()


def test_token_for_another_audience_is_401(http: httpx.Client, acme: Consumer, foreign_service: Any) -> None:
    token = _issue_directly(foreign_service("--audience", "another-api"), acme)
    assert jwt.decode(token, options={"verify_signature": False})["aud"] in ("another-api", ["another-api"])
    # Signed by a real key: only the audience is wrong.
    assert_error(_call(http, token), 401)


def test_token_of_another_issuer_is_401(http: httpx.Client, acme: Consumer, foreign_service: Any) -> None:
    token = _issue_directly(foreign_service("--issuer", "https://impostor.example"), acme)
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == "https://impostor.example"
    assert_error(_call(http, token), 401)


def test_token_endpoint_and_jwks_need_no_token(http: httpx.Client) -> None:
    assert http.get("/.well-known/jwks.json").status_code == 200
    assert http.post("/oauth/token", data={"grant_type": "client_credentials"}).status_code in (400, 401)
