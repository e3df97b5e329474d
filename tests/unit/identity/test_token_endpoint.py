"""The token endpoint against RFC 6749 sections 2.3.1, 4.4, 5.1 and 5.2 and the contract's exact answers."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest

from orchestra_server.identity import client_secrets
from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from orchestra_server.identity.consumers import ACCESS_PERMISSION
from orchestra_server.identity.token_endpoint import MAX_BODY_BYTES, TokenEndpoint, TokenResponse

from .conftest import FAST, NOW, FakeDirectory

FORM = "application/x-www-form-urlencoded"
CLIENT = "c0ffee"
SECRET = "s3cret-Value_0123456789abcdefghijklmnopqrstuv"
# Everything RFC 6749 appendix B makes a client encode.
ODD_SECRET = "p@ss:w+rd/%&=? ü~\"'"
INVALID_CLIENT = b'{"error": "invalid_client"}'
INVALID_REQUEST = b'{"error": "invalid_request"}'


@pytest.fixture
def endpoint(directory: FakeDirectory, issuer: AccessTokenIssuer) -> TokenEndpoint:
    directory.add(CLIENT, SECRET, tenant_id="tenant-a")
    return TokenEndpoint(directory, issuer, hash_params=FAST)


def _form(*pairs: tuple[str, str]) -> bytes:
    return urlencode(pairs).encode()


def _grant(client_id: str = CLIENT, secret: str = SECRET) -> bytes:
    return _form(("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret))


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()


def _post(
    endpoint: TokenEndpoint, body: bytes, content_type: str | None = FORM, authorization: str | None = None
) -> TokenResponse:
    response = endpoint.handle(body, content_type, authorization, NOW)
    # Every answer, good or bad, is uncacheable JSON (RFC 6749 sections 5.1 and 5.2).
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Content-Type"] == "application/json"
    return response


def _assert_error(response: TokenResponse, status: int, code: str) -> None:
    assert response.status == status
    assert response.body == json.dumps({"error": code}).encode()
    assert json.loads(response.body) == {"error": code}


def _token_claims(response: TokenResponse, verifier: AccessTokenVerifier) -> Any:
    assert response.status == 200
    answer = json.loads(response.body)
    assert list(answer) == ["access_token", "expires_in", "token_type"]
    assert answer["expires_in"] == 3600
    assert answer["token_type"] == "Bearer"
    assert response.body == (
        b'{"access_token": "'
        + answer["access_token"].encode()
        + b'", "expires_in": 3600, "token_type": "Bearer"}'
    )
    return verifier.verify(answer["access_token"], NOW)


def test_credentials_in_the_body(endpoint: TokenEndpoint, verifier: AccessTokenVerifier) -> None:
    response = _post(endpoint, _grant())
    verified = _token_claims(response, verifier)
    assert (verified.client_id, verified.tenant_id) == (CLIENT, "tenant-a")
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize(
    "permissions",
    [
        pytest.param({"operate orchestra"}, id="operator"),
        pytest.param({"deploy orchestra definitions"}, id="deployer"),
        pytest.param({"operate orchestra", "access orchestra ui"}, id="operator-and-other"),
    ],
)
def test_any_api_permission_earns_a_token(
    directory: FakeDirectory, endpoint: TokenEndpoint, verifier: AccessTokenVerifier, permissions: set[str]
) -> None:
    # Each route checks its own permission; the door only asks for one of the API's.
    directory.update(CLIENT, permissions=frozenset(permissions))
    assert _token_claims(_post(endpoint, _grant()), verifier).client_id == CLIENT


def test_credentials_with_http_basic(endpoint: TokenEndpoint, verifier: AccessTokenVerifier) -> None:
    response = _post(
        endpoint, _form(("grant_type", "client_credentials")), authorization=_basic(CLIENT, SECRET)
    )
    assert _token_claims(response, verifier).client_id == CLIENT


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_basic_with_encoded_special_characters(
    directory: FakeDirectory, endpoint: TokenEndpoint, verifier: AccessTokenVerifier, scheme: str
) -> None:
    directory.add("odd:client id", ODD_SECRET, tenant_id="tenant-b")
    authorization = _basic("odd:client id", ODD_SECRET).replace("Basic", scheme)
    response = _post(endpoint, _form(("grant_type", "client_credentials")), authorization=authorization)
    verified = _token_claims(response, verifier)
    assert (verified.client_id, verified.tenant_id) == ("odd:client id", "tenant-b")


def test_body_with_encoded_special_characters(
    directory: FakeDirectory, endpoint: TokenEndpoint, verifier: AccessTokenVerifier
) -> None:
    directory.add("odd-client", ODD_SECRET)
    assert (
        _token_claims(_post(endpoint, _grant("odd-client", ODD_SECRET)), verifier).client_id == "odd-client"
    )


def test_basic_without_encoding_is_the_wrong_secret(
    directory: FakeDirectory, endpoint: TokenEndpoint
) -> None:
    directory.add("plus-client", "a+b")
    raw = "Basic " + base64.b64encode(b"plus-client:a+b").decode()
    # "+" is a space in form encoding, so a client that does not encode sends another secret.
    _assert_error(
        _post(endpoint, _form(("grant_type", "client_credentials")), authorization=raw), 401, "invalid_client"
    )


def test_charset_parameter_and_unknown_parameters_are_accepted(
    endpoint: TokenEndpoint, verifier: AccessTokenVerifier
) -> None:
    body = _grant() + b"&audience=whatever&resource="
    response = _post(endpoint, body, content_type="Application/X-WWW-Form-Urlencoded; charset=UTF-8")
    assert _token_claims(response, verifier).client_id == CLIENT


def test_empty_scope_is_no_scope(endpoint: TokenEndpoint, verifier: AccessTokenVerifier) -> None:
    assert _token_claims(_post(endpoint, _grant() + b"&scope="), verifier).client_id == CLIENT


@pytest.mark.parametrize(
    "consumer",
    [
        pytest.param({"client_id": "nobody"}, id="unknown-client"),
        pytest.param({"secret": "wrong"}, id="wrong-secret"),
        pytest.param({"secret": SECRET[:-1]}, id="secret-prefix"),
        pytest.param({"revoked": True}, id="revoked"),
        pytest.param({"permissions": frozenset()}, id="no-permission"),
        pytest.param({"permissions": frozenset({"access orchestra ui"})}, id="other-permission"),
    ],
)
@pytest.mark.parametrize("method", ["body", "basic"])
def test_every_client_failure_gets_the_same_answer(
    directory: FakeDirectory, endpoint: TokenEndpoint, consumer: dict[str, Any], method: str
) -> None:
    if "revoked" in consumer or "permissions" in consumer:
        directory.update(CLIENT, **consumer)
    client_id, secret = consumer.get("client_id", CLIENT), consumer.get("secret", SECRET)
    if method == "body":
        response = _post(endpoint, _grant(client_id, secret))
        assert "WWW-Authenticate" not in response.headers
    else:
        response = _post(
            endpoint, _form(("grant_type", "client_credentials")), authorization=_basic(client_id, secret)
        )
        # RFC 6749 section 5.2: a client that tried the Authorization header is told the scheme.
        assert response.headers["WWW-Authenticate"] == 'Basic realm="orchestra"'
    _assert_error(response, 401, "invalid_client")
    assert response.body == INVALID_CLIENT


def test_an_unknown_client_costs_a_hash_like_a_wrong_secret(
    directory: FakeDirectory, endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_dummy, real_verify = client_secrets.dummy_verify, client_secrets.verify_secret

    def dummy(secret: str, params: Any) -> bool:
        calls.append(f"dummy n={params.n}")
        return real_dummy(secret, params)

    def verify(secret: str, stored: str) -> bool:
        calls.append(f"verify {stored.split('$')[1]}")
        return real_verify(secret, stored)

    monkeypatch.setattr(client_secrets, "dummy_verify", dummy)
    monkeypatch.setattr(client_secrets, "verify_secret", verify)
    _post(endpoint, _grant("nobody", SECRET))
    _post(endpoint, _grant(CLIENT, "wrong"))
    directory.update(CLIENT, revoked=True)
    _post(endpoint, _grant(CLIENT, SECRET))
    directory.update(CLIENT, revoked=False, permissions=frozenset())
    _post(endpoint, _grant(CLIENT, SECRET))
    assert calls == [f"dummy n={FAST.n}", f"verify {FAST.n}", f"verify {FAST.n}", f"verify {FAST.n}"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            _form(("grant_type", "client_credentials"), ("client_secret", SECRET)), id="no-client-id"
        ),
        pytest.param(_form(("grant_type", "client_credentials"), ("client_id", CLIENT)), id="no-secret"),
        pytest.param(
            _form(("grant_type", "client_credentials"), ("client_id", CLIENT), ("client_secret", "")),
            id="empty-secret",
        ),
        pytest.param(
            _form(("grant_type", "client_credentials"), ("client_id", ""), ("client_secret", SECRET)),
            id="empty-client-id",
        ),
        pytest.param(_form(("grant_type", "client_credentials")), id="no-credentials"),
    ],
)
def test_no_client_authentication_is_invalid_client(endpoint: TokenEndpoint, body: bytes) -> None:
    _assert_error(_post(endpoint, body), 401, "invalid_client")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_form(("client_id", CLIENT), ("client_secret", SECRET)), id="no-grant-type"),
        pytest.param(
            _form(("grant_type", ""), ("client_id", CLIENT), ("client_secret", SECRET)), id="empty-grant"
        ),
        pytest.param(b"", id="empty-body"),
        pytest.param(_grant() + b"&grant_type=client_credentials", id="duplicate-grant-type"),
        pytest.param(_grant() + b"&client_id=" + CLIENT.encode(), id="duplicate-client-id"),
        pytest.param(_grant() + b"&client_secret=" + SECRET.encode(), id="duplicate-secret"),
        pytest.param(_grant() + b"&client_secret=other", id="conflicting-secret"),
        pytest.param(_grant() + b"&scope=&scope=", id="duplicate-empty-scope"),
        pytest.param(_grant() + b"&foo=1&foo=2", id="duplicate-unknown"),
        pytest.param(b"\xff\xfe" + _grant(), id="not-utf8"),
        pytest.param(_grant().replace(b"client_credentials", b"client_credentials%FF"), id="escape-not-utf8"),
        pytest.param(_grant() + b"&x=%zz", id="bad-escape"),
        pytest.param(_grant() + b"&x=a b", id="raw-space"),
        pytest.param(_grant() + "&x=\u00fc".encode(), id="raw-non-ascii"),
        pytest.param(b"\x00\x01\x02garbage", id="garbage"),
        pytest.param(b'{"grant_type": "client_credentials"}', id="json-body"),
        pytest.param(_grant().replace(b"client_id=c0ffee", b"client_id=c0ffee%00"), id="nul-in-client-id"),
        pytest.param(_grant() + b"&pad=" + b"a" * MAX_BODY_BYTES, id="oversized"),
    ],
)
def test_malformed_requests_are_invalid_request(endpoint: TokenEndpoint, body: bytes) -> None:
    _assert_error(_post(endpoint, body), 400, "invalid_request")


def test_the_size_limit_is_inclusive(endpoint: TokenEndpoint, verifier: AccessTokenVerifier) -> None:
    body = _grant() + b"&pad="
    body += b"a" * (MAX_BODY_BYTES - len(body))
    assert len(body) == MAX_BODY_BYTES
    assert _token_claims(_post(endpoint, body), verifier).client_id == CLIENT
    _assert_error(_post(endpoint, body + b"a"), 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded-extra",
        "application/x-www-form-urlencoded; charset=iso-8859-1",
    ],
)
def test_wrong_content_type_is_invalid_request(endpoint: TokenEndpoint, content_type: str | None) -> None:
    _assert_error(_post(endpoint, _grant(), content_type=content_type), 400, "invalid_request")


def test_basic_and_body_authentication_together_is_invalid_request(endpoint: TokenEndpoint) -> None:
    response = _post(endpoint, _grant(), authorization=_basic(CLIENT, SECRET))
    _assert_error(response, 400, "invalid_request")
    # Even when the body half alone would be wrong, the request is malformed first.
    response = _post(endpoint, _grant(CLIENT, "other"), authorization=_basic(CLIENT, SECRET))
    _assert_error(response, 400, "invalid_request")


def test_basic_with_the_same_client_id_in_the_body_is_accepted(
    endpoint: TokenEndpoint, verifier: AccessTokenVerifier
) -> None:
    body = _form(("grant_type", "client_credentials"), ("client_id", CLIENT))
    response = _post(endpoint, body, authorization=_basic(CLIENT, SECRET))
    assert _token_claims(response, verifier).client_id == CLIENT
    body = _form(("grant_type", "client_credentials"), ("client_id", "someone-else"))
    _assert_error(_post(endpoint, body, authorization=_basic(CLIENT, SECRET)), 400, "invalid_request")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "Basic",
        "Basic ",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":secret-only").decode(),
        "Basic " + base64.b64encode(CLIENT.encode() + b":").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"c0ffee:%FF").decode(),
        "Digest username=c0ffee",
    ],
)
def test_malformed_basic_is_invalid_client_with_a_challenge(
    endpoint: TokenEndpoint, authorization: str
) -> None:
    response = _post(endpoint, _form(("grant_type", "client_credentials")), authorization=authorization)
    _assert_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="orchestra"'


def test_an_oversized_authorization_header_is_invalid_request(endpoint: TokenEndpoint) -> None:
    response = _post(
        endpoint, _form(("grant_type", "client_credentials")), authorization="Basic " + "A" * 5000
    )
    _assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "grant_type", ["password", "authorization_code", "refresh_token", "CLIENT_CREDENTIALS", "urn:x:custom"]
)
def test_other_grant_types_are_unsupported(endpoint: TokenEndpoint, grant_type: str) -> None:
    body = _form(("grant_type", grant_type), ("client_id", CLIENT), ("client_secret", SECRET))
    _assert_error(_post(endpoint, body), 400, "unsupported_grant_type")


def test_unsupported_grant_type_is_answered_before_client_authentication(endpoint: TokenEndpoint) -> None:
    body = _form(("grant_type", "password"), ("client_id", "nobody"), ("client_secret", "x"))
    _assert_error(_post(endpoint, body), 400, "unsupported_grant_type")


@pytest.mark.parametrize("scope", ["read", "access orchestra api", " ", "openid profile"])
def test_any_scope_is_invalid_scope(endpoint: TokenEndpoint, scope: str) -> None:
    _assert_error(_post(endpoint, _grant() + b"&" + _form(("scope", scope))), 400, "invalid_scope")


def test_scope_with_bad_credentials_reveals_nothing(endpoint: TokenEndpoint) -> None:
    _assert_error(_post(endpoint, _grant("nobody") + b"&scope=read"), 401, "invalid_client")


def test_the_token_reflects_the_consumer_tenant(
    directory: FakeDirectory, endpoint: TokenEndpoint, verifier: AccessTokenVerifier
) -> None:
    directory.add(
        "other", "other-secret", tenant_id="tenant-z", permissions=frozenset({ACCESS_PERMISSION, "x"})
    )
    assert _token_claims(_post(endpoint, _grant("other", "other-secret")), verifier).tenant_id == "tenant-z"
