"""POST /oauth/token (client credentials) and GET /.well-known/jwks.json through the edge."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.contract.conftest import JWKS_CACHE_SECONDS, TENANT_A, Cli
from tests.contract.helpers import Consumer, assert_error, assert_ok

pytestmark = pytest.mark.timeout(120)


def _form(client_id: str, client_secret: str, grant_type: str = "client_credentials") -> dict[str, str]:
    return {"grant_type": grant_type, "client_id": client_id, "client_secret": client_secret}


def test_client_credentials_in_the_body(http: httpx.Client, acme: Consumer) -> None:
    response = http.post("/oauth/token", data=_form(acme.client_id, acme.client_secret))
    body = assert_ok(response)
    assert body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int)
    assert body["expires_in"] > 0
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256"
    assert header["typ"] == "at+jwt"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["iss"] == "orchestra"
    assert claims["aud"] in ("orchestra-api", ["orchestra-api"])
    assert claims["client_id"] == acme.client_id
    assert claims["tenant_id"] == TENANT_A
    assert claims["exp"] > time.time()
    assert {"sub", "iat", "jti"} <= set(claims)


def test_client_credentials_with_http_basic(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(acme.client_id, acme.client_secret)
    )
    assert "access_token" in assert_ok(response)


def test_issued_token_is_accepted_by_the_api(http: httpx.Client, acme: Consumer) -> None:
    token = http.post("/oauth/token", data=_form(acme.client_id, acme.client_secret)).json()["access_token"]
    response = http.get("/orchestra-api/instances", headers={"authorization": f"Bearer {token}"})
    assert_ok(response)


def test_wrong_secret_is_invalid_client(http: httpx.Client, acme: Consumer) -> None:
    response = http.post("/oauth/token", data=_form(acme.client_id, acme.client_secret + "x"))
    assert_error(response, 401, "invalid_client")


def test_wrong_basic_secret_is_invalid_client(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(acme.client_id, "nope")
    )
    assert_error(response, 401, "invalid_client")


def test_unknown_client_is_invalid_client(http: httpx.Client) -> None:
    response = http.post("/oauth/token", data=_form("no-such-client", "secret"))
    assert_error(response, 401, "invalid_client")


def test_other_grant_type_is_unsupported(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/oauth/token", data=_form(acme.client_id, acme.client_secret, grant_type="password")
    )
    assert_error(response, 400, "unsupported_grant_type")


def test_missing_grant_type_is_invalid_request(http: httpx.Client, acme: Consumer) -> None:
    response = http.post(
        "/oauth/token", data={"client_id": acme.client_id, "client_secret": acme.client_secret}
    )
    assert_error(response, 400, "invalid_request")


def test_revoked_consumer_gets_no_token_and_loses_its_token(
    http: httpx.Client, cli: Cli, consumer_for: Callable[[str], Consumer]
) -> None:
    doomed = consumer_for(TENANT_A)
    assert_ok(http.get("/orchestra-api/instances", headers=doomed.headers))
    cli("consumer", "revoke", doomed.client_id)
    assert_error(
        http.post("/oauth/token", data=_form(doomed.client_id, doomed.client_secret)), 401, "invalid_client"
    )
    # The service re-checks revocation within seconds.
    deadline = time.monotonic() + 15
    while True:
        response = http.get("/orchestra-api/instances", headers=doomed.headers)
        if response.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert_error(response, 401)


def test_jwks_is_public_and_holds_the_signing_key(http: httpx.Client, acme: Consumer) -> None:
    response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    # Cacheable for as long as the edge itself caches it (see test_edge_defences).
    assert response.headers["cache-control"] == f"public, max-age={JWKS_CACHE_SECONDS}"
    assert response.headers["content-type"].startswith("application/json")
    keys = json.loads(response.content)["keys"]
    kid = jwt.get_unverified_header(acme.token)["kid"]
    assert kid in {key["kid"] for key in keys}
    for key in keys:
        assert key["kty"] == "EC"
        assert key["crv"] == "P-256"
        # Public halves only.
        assert "d" not in key
