"""Hostile requests through the edge: each gets a clean 4xx in the contract's shape and leaves no trace."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import jwt
import pytest
from sqlalchemy import text

from orchestra_server.edge import EnvoyProcess
from orchestra_server.identity.keys import KeyRing
from orchestra_server.storage.database import open_database
from tests.contract.conftest import Cli
from tests.contract.helpers import Consumer, assert_error, assert_ok, start

TABLES = ("instances", "tokens", "variables", "audit", "idempotency_keys", "definitions")


@pytest.fixture
def untouched(cli: Cli) -> Iterator[None]:
    """Fails the test if any row was written while it ran."""
    database = open_database(f"sqlite:///{cli.data_dir / 'orchestra.db'}")

    def counts() -> dict[str, int]:
        with database.engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()) for t in TABLES}  # noqa: S608

    before = counts()
    yield
    assert counts() == before, "a refused request left a trace"
    database.dispose()


def bad(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text}"
    assert_error(response, response.status_code)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_hostile_bodies(http: httpx.Client, acme: Consumer, untouched: None) -> None:
    post = "/orchestra-api/process/three_step/start"
    bodies: list[bytes] = [
        b"{",
        b"[]",
        b'"just a string"',
        b'{"variables": []}',
        b'{"variables": "x"}',
        b'{"variables": {"a": 1}',
        b'{"variables": {"bad name": 1}}',
        b'{"variables": {"\xe5\x90\x8d\xe5\x89\x8d": 1}}',
        b'{"variables": {"a": "\\ud800"}}',
        b'{"variables": {"a": 1e400}}',
        b"\xff\xfe\x00\x00",
        b'{"variables": {"a": NaN}}',
        ('{"variables": {"a": ' + "[" * 200 + "]" * 200 + "}}").encode(),
    ]
    for body in bodies:
        bad(http.post(post, content=body, headers={**acme.headers, "content-type": "application/json"}))
    bad(http.post(post, json={"variables": {"deep": nested(40)}}, headers=acme.headers))


def test_hostile_ids_and_names(http: httpx.Client, acme: Consumer, untouched: None) -> None:
    hostile = [
        "../../etc/passwd",
        "..",
        "' OR '1'='1",
        "x'; DROP TABLE instances; --",
        "%00",
        "\u202etxt.exe",
        "😀" * 10,
        "a" * 5000,
    ]
    for value in hostile:
        segment = quote(value, safe="")
        bad(http.get(f"/orchestra-api/instance/{segment}", headers=acme.headers))
        bad(http.post(f"/orchestra-api/token/{segment}/signal", headers=acme.headers))
        bad(http.post(f"/orchestra-api/process/{segment}/start", json={}, headers=acme.headers))
        bad(
            http.put(f"/orchestra-api/instance/{segment}/variable/a", json={"value": 1}, headers=acme.headers)
        )
        variables = http.get(f"/orchestra-api/instance/{segment}/variables", headers=acme.headers)
        # The contract's empty object, or a clean refusal of a path that cannot name an instance.
        if variables.status_code == 200:
            assert variables.json() == {}, value
        else:
            bad(variables)


def test_hostile_variable_names_on_a_real_instance(http: httpx.Client, acme: Consumer) -> None:
    instance_id = start(http, acme, "three_step")
    for name in ["1abc", "a-b", "a;b", "a b", "名前", "' OR 1=1 --", "a" * 129, ".."]:
        bad(
            http.put(
                f"/orchestra-api/instance/{instance_id}/variable/{quote(name, safe='')}",
                json={"value": 1},
                headers=acme.headers,
            )
        )
    assert assert_ok(http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=acme.headers)) == {}


def test_hostile_headers(edge: EnvoyProcess, acme: Consumer, untouched: None) -> None:
    """Header injection and oversized headers are refused before anything happens."""
    url = urlparse(edge.rest_url)
    smuggled = (
        b"GET /orchestra-api/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + acme.token.encode()
        + b"\r\nX-Test: a\rX-Orchestra-Tenant: globex\r\nConnection: close\r\n\r\n"
    )
    # A bare CR cannot start a new header: either refused, or the caller's own tenant answers.
    answer = _raw(url.hostname or "127.0.0.1", url.port or 80, smuggled)
    status = int(answer.split(b" ", 2)[1])
    assert status == 400 or (status == 200 and b"globex" not in answer), answer[:300]
    requests = [
        # A 100 KiB header.
        b"GET /orchestra-api/instances HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        # Two Content-Length headers that disagree.
        b"POST /orchestra-api/process/three_step/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + acme.token.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    ]
    for raw in requests:
        answer = _raw(url.hostname or "127.0.0.1", url.port or 80, raw)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]


def _raw(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_idempotency_key_must_be_printable(http: httpx.Client, acme: Consumer, untouched: None) -> None:
    response = http.post(
        "/orchestra-api/process/three_step/start",
        json={},
        headers={**acme.headers, "idempotency-key": "x" * 300},
    )
    bad(response)


def _real_key_token(cli: Cli, acme: Consumer, **changes: Any) -> str:
    ring = KeyRing.load_or_create(cli.data_dir / "signing-keys.json", datetime.now(UTC))
    key = ring.signing_key(datetime.now(UTC))
    claims = {**jwt.decode(acme.token, options={"verify_signature": False}), "jti": uuid.uuid4().hex}
    headers = {"kid": key.kid, "typ": "at+jwt"}
    headers.update(changes.pop("headers", {}))
    claims.update(changes)
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


def test_hostile_tokens_signed_with_the_real_key(http: httpx.Client, cli: Cli, acme: Consumer) -> None:
    now = int(time.time())
    tokens = {
        "unknown kid": _real_key_token(cli, acme, headers={"kid": "no-such-key"}),
        "not yet valid": _real_key_token(cli, acme, nbf=now + 3600, iat=now + 3600, exp=now + 7200),
        "expired": _real_key_token(cli, acme, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "other tenant claim": _real_key_token(cli, acme, tenant_id="globex"),
        "wrong typ": _real_key_token(cli, acme, headers={"typ": "JWT"}),
    }
    for name, token in tokens.items():
        response = http.get("/orchestra-api/instances", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert_error(response, 401)
    # The unaltered original still works: the refusals above were about the changes.
    assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))
