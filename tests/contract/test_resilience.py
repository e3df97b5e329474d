"""Edge behaviour around the calls: per-tenant rate limit, several upstreams, key rotation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.identity.keys import KeyRing
from orchestra_server.settings import Settings
from tests.contract.conftest import JWKS_CACHE_SECONDS, Cli, Service, fetch_token, free_port, start_edge
from tests.contract.helpers import Consumer, assert_error, assert_ok, start

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def limited_edge(service: Service, run_dir: Path) -> Iterator[EnvoyProcess]:
    # A burst of 3, refilled by one request a second: eight calls in quick succession see the
    # burst and at least one refusal (a refill may let one more through, hence the >= below).
    edge = start_edge(
        run_dir,
        (Upstream("127.0.0.1", service.port),),
        tenant_rate_limit=TenantRateLimit(requests_per_second=1, burst=3),
    )
    yield edge
    edge.stop()


def test_rate_limit_is_per_tenant(limited_edge: EnvoyProcess, acme: Consumer, globex: Consumer) -> None:
    with httpx.Client(base_url=limited_edge.rest_url, timeout=10) as http:
        statuses = [http.get("/orchestra-api/instances", headers=acme.headers).status_code for _ in range(8)]
        assert statuses.count(200) >= 3
        assert 429 in statuses
        limited = http.get("/orchestra-api/instances", headers=acme.headers)
        assert_error(limited, 429, "rate limit exceeded")
        # Another tenant has its own bucket.
        assert_ok(http.get("/orchestra-api/instances", headers=globex.headers))


def test_a_dead_upstream_is_skipped(service: Service, run_dir: Path, acme: Consumer) -> None:
    dead = Upstream("127.0.0.1", free_port())
    edge = start_edge(run_dir, (dead, Upstream("127.0.0.1", service.port)))
    try:
        with httpx.Client(base_url=edge.rest_url, timeout=10) as http:
            for _ in range(10):
                assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))
    finally:
        edge.stop()


def test_two_workers_behind_one_edge(
    cli: Cli, service: Service, run_dir: Path, acme: Consumer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    second = Service(cli, tmp_path_factory.mktemp("second") / "service.log")
    edge = start_edge(run_dir, (Upstream("127.0.0.1", service.port), Upstream("127.0.0.1", second.port)))
    try:
        with httpx.Client(base_url=edge.rest_url, timeout=10) as http:
            ids = [start(http, acme, "three_step") for _ in range(6)]
            listed = {
                item["id"]
                for item in assert_ok(
                    http.get("/orchestra-api/instances", params={"page_size": 1000}, headers=acme.headers)
                )
            }
            assert set(ids) <= listed
    finally:
        edge.stop()
        second.stop()


def test_rotation_publishes_the_new_key_and_old_tokens_keep_working(
    http: httpx.Client, cli: Cli, acme: Consumer
) -> None:
    before = {key["kid"] for key in http.get("/.well-known/jwks.json").json()["keys"]}
    cli("keys", "rotate")
    deadline = time.monotonic() + 10
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.2)
        after = {key["kid"] for key in http.get("/.well-known/jwks.json").json()["keys"]}
    assert before < after
    assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))
    time.sleep(JWKS_CACHE_SECONDS + 1)
    assert_ok(http.get("/orchestra-api/instances", headers=acme.headers))


def test_tokens_of_a_rotated_in_key_pass_without_restarting_the_edge(
    http: httpx.Client, cli: Cli, acme: Consumer, edge: EnvoyProcess
) -> None:
    pid = edge.pid
    old_kid = jwt.get_unverified_header(fetch_token(http, acme.client_id, acme.client_secret))["kid"]
    # This edge refetches keys every JWKS_CACHE_SECONDS, far sooner than the
    # production edge the CLI's minimum lead is set for, so the ring is
    # rotated directly with a lead that covers this edge.
    now = datetime.now(UTC)
    KeyRing.load_or_create(Settings(data_dir=cli.data_dir).signing_keys_path, now).rotate(
        now, timedelta(seconds=JWKS_CACHE_SECONDS + 2)
    )
    deadline = time.monotonic() + 4 * JWKS_CACHE_SECONDS + 20
    while True:
        token = fetch_token(http, acme.client_id, acme.client_secret)
        if jwt.get_unverified_header(token)["kid"] != old_kid or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert jwt.get_unverified_header(token)["kid"] != old_kid
    assert_ok(http.get("/orchestra-api/instances", headers={"authorization": f"Bearer {token}"}))
    assert edge.pid == pid
    assert edge.running
