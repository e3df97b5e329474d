"""The edge process starts, answers in the contract's shapes with the service down, and stops."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestra_server.edge import EdgeSettings, EnvoyProcess, Upstream

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    # Nothing listens on the upstream port: every call that reaches the
    # router finds the service down.
    settings = EdgeSettings(rest_port=_free_port(), upstreams=(Upstream("127.0.0.1", _free_port()),))
    process = EnvoyProcess(settings, tmp_path_factory.mktemp("edge"), concurrency=1)
    process.start(timeout=30)
    yield process
    process.stop()


@pytest.fixture
def client(edge: EnvoyProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.rest_url, timeout=10) as http:
        yield http


def _assert_error(response: httpx.Response, status: int, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    if message is not None:
        assert body["error"] == message


def test_start_waits_for_the_listener_and_admin(edge: EnvoyProcess) -> None:
    assert edge.running
    admin = edge.admin_address()
    assert admin is not None
    ready = httpx.get(f"http://{admin[0]}:{admin[1]}/ready", timeout=5)
    assert ready.status_code == 200
    assert edge.config_path.is_file()


def test_service_down_is_503(client: httpx.Client) -> None:
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"})
    _assert_error(response, 503, "service unavailable")
    _assert_error(client.get("/.well-known/jwks.json"), 503, "service unavailable")


def test_api_without_token_is_401_before_the_service(client: httpx.Client) -> None:
    response = client.get("/orchestra-api/instances")
    _assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_unknown_path_is_404(client: httpx.Client) -> None:
    _assert_error(client.get("/no/such/path"), 404, "not found")
    # Under the API prefix the token is checked first: no unauthenticated
    # probing of which operations exist.
    _assert_error(client.get("/orchestra-api/no-such-operation"), 401)


def test_oversized_body_is_413(client: httpx.Client) -> None:
    response = client.post(
        "/oauth/token",
        content=b"a" * (3 * 1024 * 1024),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _assert_error(response, 413, "request body too large")


def test_stop_ends_the_process(tmp_path: Path) -> None:
    settings = EdgeSettings(
        rest_port=_free_port(), upstreams=(Upstream("127.0.0.1", _free_port()),), admin_port=None
    )
    with EnvoyProcess(settings, tmp_path, concurrency=1) as process:
        assert process.running
        # Without an admin interface readiness is judged on the REST port.
        assert httpx.get(f"{process.rest_url}/nothing", timeout=5).status_code == 404
        pid = process.pid
    assert not process.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
