"""The OAuth 2.0 token endpoint: the client-credentials grant (RFC 6749 sections 2.3.1, 4.4, 5.1, 5.2)."""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oauthlib.common import urldecode
from oauthlib.oauth2 import BackendApplicationServer, RequestValidator
from oauthlib.oauth2.rfc6749 import errors as oauth_errors

from orchestra_server.identity.access_tokens import AccessTokenIssuer
from orchestra_server.identity.client_secrets import DEFAULT_PARAMS, ScryptParams, SecretChecks
from orchestra_server.identity.consumers import API_PERMISSIONS, ConsumerCredentials, ConsumerDirectory

MAX_BODY_BYTES = 4096
MAX_AUTHORIZATION_LENGTH = 4096
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
REALM = "orchestra"
# oauthlib wants a URI; the endpoint's real address plays no part in the grant.
_URI = "https://orchestra.invalid/oauth/token"
_KNOWN_ERRORS = frozenset({"invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"})


@dataclass(frozen=True)
class TokenResponse:
    """The HTTP answer: status, JSON body bytes and headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class _BadRequest(Exception):
    pass


class _Validator(RequestValidator):  # type: ignore[misc]
    """Per-request glue between oauthlib and the consumer directory."""

    def __init__(
        self,
        directory: ConsumerDirectory,
        basic: tuple[str, str] | None,
        basic_attempted: bool,
        hash_params: ScryptParams,
        checks: SecretChecks,
    ) -> None:
        super().__init__()
        self._directory = directory
        self._basic = basic
        self._basic_attempted = basic_attempted
        self._hash_params = hash_params
        self._checks = checks

    def authenticate_client(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        body_id: str | None = request.client_id or None
        body_secret: str | None = request.client_secret or None
        if self._basic_attempted:
            if body_secret is not None:
                raise oauth_errors.InvalidRequestError(request=request)
            if self._basic is None:
                return False
            client_id, secret = self._basic
            if body_id is not None and body_id != client_id:
                raise oauth_errors.InvalidRequestError(request=request)
        else:
            if body_id is None or body_secret is None:
                # No client authentication at all is `invalid_client` (RFC 6749 section 5.2),
                # at the price of one hash like every other refusal.
                self._checks.dummy(body_id or "", body_secret or "", self._hash_params)
                return False
            client_id, secret = body_id, body_secret
        if "\x00" in client_id or "\x00" in secret:
            raise oauth_errors.InvalidRequestError(request=request)
        consumer = self._directory.find_consumer(client_id)
        if consumer is None:
            return self._checks.dummy(client_id, secret, self._hash_params)
        refused = (
            consumer.client_id != client_id
            or consumer.revoked
            # Any API permission earns a token; each route then checks its own.
            or API_PERMISSIONS.isdisjoint(consumer.permissions)
        )
        # The secret is checked whatever else refuses the client, so that every refusal
        # costs one hash; only a check that would grant a token may be answered from memory.
        secret_ok = self._checks.verify(client_id, secret, consumer.secret_hash, may_remember=not refused)
        if not secret_ok or refused:
            return False
        request.client = consumer
        request.client_id = client_id
        return True

    def validate_grant_type(
        self, client_id: str, grant_type: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        return grant_type == "client_credentials"

    def get_default_scopes(self, client_id: str, request: Any, *args: Any, **kwargs: Any) -> list[str]:
        return []

    def validate_scopes(
        self, client_id: str, scopes: Any, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        return not request.scope

    def save_bearer_token(self, token: Any, request: Any, *args: Any, **kwargs: Any) -> None:
        # Tokens are self-contained JWTs; nothing is stored.
        return None


def _parse_basic(value: str) -> tuple[str, str] | None:
    """`(client_id, client_secret)` from an HTTP Basic value (RFC 6749 section 2.3.1), or None."""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        raw_id, colon, raw_secret = decoded.partition(":")
        client_id = urllib.parse.unquote_plus(raw_id, errors="strict")
        secret = urllib.parse.unquote_plus(raw_secret, errors="strict")
    except (binascii.Error, ValueError):
        return None
    if not colon or not client_id or not secret:
        return None
    return client_id, secret


def _is_form(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != FORM_CONTENT_TYPE:
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return False
    return True


def _read_form(body: bytes, content_type: str | None) -> str:
    """The body as text if it is a small, well-formed UTF-8 form without repeated parameters."""
    if len(body) > MAX_BODY_BYTES or not _is_form(content_type):
        raise _BadRequest
    try:
        text = body.decode("utf-8")
        # oauthlib's own parser checks the character set and escapes; the
        # second parse adds what it lets through: percent-escapes that are
        # not UTF-8, and repeated parameters.
        urldecode(text)
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except ValueError:
        raise _BadRequest from None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _BadRequest
    return text


class TokenEndpoint:
    """Answers token requests; stateless apart from the directory and the issuer it is given.

    Decisions the RFC leaves open, taken here:

    - A client authenticates either in the body (`client_id` + `client_secret`)
      or with HTTP Basic. A `client_secret` in the body next to a Basic header is
      `invalid_request`; a body `client_id` next to Basic is tolerated only if it
      names the same client.
    - A missing or empty `client_id` or `client_secret` (no Basic header) is
      `invalid_client`: RFC 6749 section 5.2 names "no client authentication
      included" as that error, and the contract documents 401 for it.
    - Orchestra grants no OAuth scopes (authorization is the consumer roles'
      permissions: any of identity.consumers.API_PERMISSIONS earns a token, and
      each route checks its own), so any non-empty `scope` is
      `invalid_scope`, answered only after the client authenticated.
    - Any parameter given twice is `invalid_request` (RFC 6749 section 3.2).
    - An `Authorization` header that is not well-formed Basic (another scheme,
      bad base64, no colon, bad form-encoding) is `invalid_client` with the
      Basic challenge: the client tried header authentication and failed.
    - Checks run in this order: size, content type and body encoding; then
      oauthlib's grant-type checks; then client authentication; then scope.
    - Exceptions from the directory (storage down) are not caught here.
    - Error bodies are exactly `{"error": "<code>"}`: no description, so the
      answer for an unknown client, a wrong secret, a revoked consumer and a
      consumer without the permission is byte-for-byte the same.
    """

    def __init__(
        self,
        directory: ConsumerDirectory,
        issuer: AccessTokenIssuer,
        *,
        hash_params: ScryptParams = DEFAULT_PARAMS,
        checks: SecretChecks | None = None,
    ) -> None:
        """`hash_params` should be those the stored secrets use: an unknown client then costs the same."""
        self._directory = directory
        self._issuer = issuer
        self._hash_params = hash_params
        self._checks = checks or SecretChecks()

    def handle(
        self, body: bytes, content_type: str | None, authorization: str | None, now: datetime
    ) -> TokenResponse:
        """The answer to one `POST /oauth/token`."""
        basic_attempted = bool(authorization)
        try:
            if authorization is not None and len(authorization) > MAX_AUTHORIZATION_LENGTH:
                raise _BadRequest
            text = _read_form(body, content_type)
        except _BadRequest:
            return self._error("invalid_request", basic_attempted)
        basic = _parse_basic(authorization) if authorization else None
        validator = _Validator(self._directory, basic, basic_attempted, self._hash_params, self._checks)
        issued: list[tuple[str, int]] = []

        def generate(request: Any) -> str:
            consumer: ConsumerCredentials = request.client
            issued.append(self._issuer.issue(consumer.client_id, consumer.tenant_id, now))
            # oauthlib logs the token it builds at debug level; it never sees the real one.
            return "-"

        server = BackendApplicationServer(
            validator, token_generator=generate, token_expires_in=self._issuer.lifetime_seconds
        )
        _, oauth_body, status = server.create_token_response(_URI, http_method="POST", body=text)
        if status == 200 and len(issued) == 1:
            access_token, expires_in = issued[0]
            answer = {"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"}
            return TokenResponse(200, json.dumps(answer).encode("ascii"), self._headers())
        error = json.loads(oauth_body).get("error")
        if error not in _KNOWN_ERRORS:
            # Anything else means the validator and oauthlib disagree; no
            # token, and nothing revealed.
            raise RuntimeError(f"unexpected token endpoint outcome {status} {error!r}")
        return self._error(error, basic_attempted)

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}

    def _error(self, code: str, basic_attempted: bool) -> TokenResponse:
        headers = self._headers()
        status = 401 if code == "invalid_client" else 400
        if status == 401 and basic_attempted:
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        return TokenResponse(status, json.dumps({"error": code}).encode("ascii"), headers)
