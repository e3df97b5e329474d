"""The edge process starts, answers in the contract's shapes with the service down, and stops."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestra_server.edge import EdgeSettings, EnvoyProcess, Upstream
from orchestra_server.edge.proxy import admin_status

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


def test_start_waits_for_the_listener(edge: EnvoyProcess) -> None:
    assert edge.running
    assert edge.config_path.is_file()
    assert edge.admin_socket is None
    # Envoy opens no port but the REST listener (the admin interface is off).
    assert _listening_ports(edge.pid) == {edge.settings.rest_port}


def _listening_ports(pid: int | None) -> set[int]:
    """TCP ports in LISTEN state owned by the process ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed since the listing (Envoy's own short-lived descriptors)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_admin_interface_is_an_owner_only_socket_when_asked_for(tmp_path: Path) -> None:
    socket_path = tmp_path / "admin.sock"
    settings = EdgeSettings(
        rest_port=_free_port(), upstreams=(Upstream("127.0.0.1", _free_port()),), admin_socket=socket_path
    )
    with EnvoyProcess(settings, tmp_path, concurrency=1) as process:
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        # Readiness was judged on the admin interface; it answers there only.
        assert admin_status(socket_path, "/ready") == 200
        assert _listening_ports(process.pid) == {settings.rest_port}


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
    settings = EdgeSettings(rest_port=_free_port(), upstreams=(Upstream("127.0.0.1", _free_port()),))
    with EnvoyProcess(settings, tmp_path, concurrency=1) as process:
        assert process.running
        assert httpx.get(f"{process.rest_url}/nothing", timeout=5).status_code == 404
        pid = process.pid
    assert not process.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
