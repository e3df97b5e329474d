"""The edge under abuse: anonymous budgets, long URLs, uniform token refusals, slow requests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.edge.config import REQUEST_HEADERS_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS
from orchestra_server.identity.keys import KeyRing
from orchestra_server.settings import Settings
from tests.contract.conftest import JWKS_CACHE_SECONDS, Cli, Service, start_edge
from tests.contract.helpers import Consumer, assert_error, assert_ok

pytestmark = pytest.mark.timeout(120)

FLOOD_CONNECTIONS = 16


def _token_form(consumer: Consumer) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": consumer.client_id,
        "client_secret": consumer.client_secret,
    }


@pytest.fixture
def small_budget_edge(service: Service, tmp_path: Path) -> Iterator[EnvoyProcess]:
    # Small enough that a loop of 16 Python connections exhausts any
    # anonymous bucket within a second.
    edge = start_edge(
        tmp_path,
        (Upstream("127.0.0.1", service.port),),
        tenant_rate_limit=TenantRateLimit(requests_per_second=2, burst=4),
    )
    yield edge
    edge.stop()


@contextlib.contextmanager
def _key_set_flood(url: str) -> Iterator[list[int]]:
    """FLOOD_CONNECTIONS connections looping GET /.well-known/jwks.json; yields their statuses."""
    stop = threading.Event()
    statuses: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while not stop.is_set():
                statuses.append(client.get("/.well-known/jwks.json").status_code)

    threads = [threading.Thread(target=flood) for _ in range(FLOOD_CONNECTIONS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    # The flood did use up its own budget, so what ran under it was tested.
    assert 429 in statuses


def test_a_key_set_flood_leaves_token_requests_alone(small_budget_edge: EnvoyProcess, acme: Consumer) -> None:
    with (
        _key_set_flood(small_budget_edge.rest_url),
        httpx.Client(base_url=small_budget_edge.rest_url) as client,
    ):
        statuses = []
        for _ in range(10):
            statuses.append(client.post("/oauth/token", data=_token_form(acme)).status_code)
            time.sleep(0.1)
    assert statuses == [200] * 10


def test_a_key_set_flood_leaves_the_edge_its_own_key_refresh(
    small_budget_edge: EnvoyProcess, cli: Cli, acme: Consumer
) -> None:
    url = small_budget_edge.rest_url
    with _key_set_flood(url), httpx.Client(base_url=url, timeout=10) as client:
        now = datetime.now(UTC)
        # A lead that covers this edge's refresh period (JWKS_CACHE_SECONDS).
        new_kid = (
            KeyRing.load_or_create(Settings(data_dir=cli.data_dir).signing_keys_path, now)
            .rotate(now, timedelta(seconds=JWKS_CACHE_SECONDS + 2))
            .kid
        )
        deadline = time.monotonic() + 4 * JWKS_CACHE_SECONDS + 10
        token = ""
        while time.monotonic() < deadline:
            answer = client.post("/oauth/token", data=_token_form(acme))
            assert answer.status_code == 200, answer.text
            token = answer.json()["access_token"]
            if jwt.get_unverified_header(token)["kid"] == new_kid:
                break
            time.sleep(0.5)
        assert jwt.get_unverified_header(token)["kid"] == new_kid
        # The edge refreshed its keys through the flood: the new key's token passes.
        assert_ok(client.get("/orchestra-api/instances", headers={"authorization": f"Bearer {token}"}))


def test_the_key_set_may_be_cached_and_nothing_else(http: httpx.Client, acme: Consumer) -> None:
    keys = http.get("/.well-known/jwks.json")
    assert keys.status_code == 200
    assert keys.headers["cache-control"].startswith("public, max-age=")
    assert_ok(http.post("/oauth/token", data=_token_form(acme)))
    assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))
    # An error on the key set's route is not cacheable.
    assert_error(http.post("/.well-known/jwks.json"), 404)


@pytest.mark.parametrize("length", [9_000, 15_000])
def test_a_very_long_instance_id_is_unknown_every_time(
    http: httpx.Client, acme: Consumer, length: int
) -> None:
    # As for any unknown id: 404, `{}` and 422, every time (never a 429).
    path = f"/orchestra-api/instance/{'x' * length}"
    for _ in range(15):
        assert_error(http.get(path, headers=acme.headers), 404)
        assert assert_ok(http.get(f"{path}/variables", headers=acme.headers)) == {}
        assert_error(http.put(f"{path}/variable/a", json={"value": 1}, headers=acme.headers), 422)


def _token_with(cli: Cli, acme: Consumer, *, kid: str | None = None, **changes: object) -> str:
    now = datetime.now(UTC)
    key = KeyRing.load_or_create(Settings(data_dir=cli.data_dir).signing_keys_path, now).signing_key(now)
    claims = {**jwt.decode(acme.token, options={"verify_signature": False}), "jti": uuid.uuid4().hex}
    claims.update(changes)
    headers = {"kid": kid or key.kid, "typ": "at+jwt"}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


def test_every_refused_token_gets_the_services_message(
    http: httpx.Client, cli: Cli, acme: Consumer, edge: EnvoyProcess
) -> None:
    now = int(time.time())
    real_kid = jwt.get_unverified_header(acme.token)["kid"]
    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = jwt.decode(acme.token, options={"verify_signature": False})
    refused = {
        "expired": _token_with(cli, acme, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "unknown kid": _token_with(cli, acme, kid="no-such-key"),
        "another audience": _token_with(cli, acme, aud="someone-else"),
        "another issuer": _token_with(cli, acme, iss="someone-else"),
        "forged signature": jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": real_kid}),
        "not a jwt": "not-a-jwt",
    }
    for name, token in refused.items():
        response = http.get("/orchestra-api/instances", headers={"authorization": f"Bearer {token}"})
        assert assert_error(response, 401) == "invalid access token", name
        assert "jwt" not in response.headers.get("www-authenticate", "").lower(), name
    assert_error(http.get("/orchestra-api/instances"), 401, "missing access token")
    assert_error(
        http.get("/orchestra-api/instances", headers={"authorization": f"Basic {acme.token}"}),
        401,
        "invalid access token",
    )
    # The edge's log keeps the reason an operator needs.
    deadline = time.monotonic() + 5
    while "Jwt_is_expired" not in _read(edge.log_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = _read(edge.log_path)
    assert "Jwt_is_expired" in log
    assert acme.token not in log


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _trickle(edge: EnvoyProcess, head: bytes, drip: bytes, limit: float) -> tuple[float, bytes]:
    """Sends `head`, then a byte of `drip` every 0.25 s until the edge answers: when it did, and what."""
    host, port = edge.rest_url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    answered_after = limit
    answer = b""
    with socket.create_connection((host, int(port)), timeout=limit) as sock:
        sock.sendall(head)
        sock.settimeout(0.25)
        sent = 0
        while time.monotonic() - started < limit and not answer.endswith(b"\r\n0\r\n\r\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not answer:
                    with contextlib.suppress(OSError):
                        sock.sendall(drip[sent % len(drip) :][:1])
                    sent += 1
                continue
            if not chunk:
                break
            if not answer:
                answered_after = time.monotonic() - started
            answer += chunk
    return answered_after, answer


def test_slow_requests_are_cut_off_with_a_clean_answer(edge: EnvoyProcess) -> None:
    slow_body = (
        b"POST /oauth/token HTTP/1.1\r\nHost: edge\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    )
    slow_headers = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: edge\r\n"
    results: dict[str, tuple[float, bytes]] = {}
    limit = REQUEST_TIMEOUT_SECONDS + 5
    cases = {"body": (slow_body, b"a=b&"), "headers": (slow_headers, b"X-Slow: yes\r\n")}

    def run(name: str) -> None:
        results[name] = _trickle(edge, *cases[name], limit)

    threads = [threading.Thread(target=run, args=(name,)) for name in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(limit + 5)
    for name, allowed, message in (
        ("body", REQUEST_TIMEOUT_SECONDS, b'{"error":"request timeout"}'),
        ("headers", REQUEST_HEADERS_TIMEOUT_SECONDS, b'{"error":"request header timeout"}'),
    ):
        elapsed, answer = results[name]
        assert answer.startswith(b"HTTP/1.1 408"), (name, elapsed, answer[:200])
        assert elapsed < allowed + 2, (name, elapsed)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"cache-control: no-store" in head.lower(), name
        # The answer is chunked; its one chunk is the contract's error.
        assert message in body, (name, body)
