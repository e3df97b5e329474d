"""Limits an operator sets: tenant rate limits through the real CLI and a running `orchestra up`,
and ports another program holds, which fail the start at once with a message naming them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from orchestra_server import runtime
from orchestra_server.bootstrap import build_application
from orchestra_server.cli import main
from orchestra_server.errors import InvalidArgument, NotFound
from orchestra_server.service.directory import DirectoryService
from orchestra_server.settings import Settings
from orchestra_server.storage.database import Database
from orchestra_server.transport.server import ServerOptions, create_server
from orchestra_server.wire.rate_limits import TenantRateLimit
from tests.conftest import FakeClock

pytestmark = pytest.mark.timeout(180)

ORCHESTRA = Path(sys.executable).parent / "orchestra"
# A running `orchestra up` reads the stored limits every 2 s; the edge applies a new file within
# a moment.
APPLY_SECONDS = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stranger() -> Iterator[Callable[..., int]]:
    """Another program listening on a port: `stranger()` binds one and returns its number
    (`port=` a given one); `stranger(reuse_port=True)` is one that would share it (SO_REUSEPORT)."""
    sockets: list[socket.socket] = []

    def listen(reuse_port: bool = False, port: int = 0) -> int:
        sock = socket.socket()
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        sock.listen()
        sockets.append(sock)
        return int(sock.getsockname()[1])

    yield listen
    for sock in sockets:
        sock.close()


def _environment() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")},
        "ORCHESTRA_LOG_FORMAT": "text",
    }


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ORCHESTRA), *args], capture_output=True, text=True, timeout=120, env=_environment(), check=False
    )


class Invoker:
    """The CLI in-process on one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __call__(self, *args: str, status: int = 0) -> Result:
        result = CliRunner().invoke(
            main, [*args, "--data-dir", str(self.data_dir)], env={"ORCHESTRA_DB_URL": ""}
        )
        assert result.exit_code == status, result.output
        return result


@pytest.fixture
def invoke(tmp_path: Path) -> Invoker:
    return Invoker(tmp_path / "data")


# --- the stored limits ---------------------------------------------------------------------------


def test_a_tenant_s_own_limit_is_stored_read_and_taken_away(database: Database, clock: FakeClock) -> None:
    directory = DirectoryService(database, clock=clock)
    directory.create_tenant("acme")
    directory.create_tenant("globex")
    assert directory.tenant_rate_limits() == {}
    directory.set_tenant_rate_limit("acme", TenantRateLimit(5, 10))
    directory.set_tenant_rate_limit("globex", TenantRateLimit.OFF)
    assert directory.tenant_rate_limits() == {"acme": TenantRateLimit(5, 10), "globex": TenantRateLimit.OFF}
    listed = {t.id: t.rate_limit for t in directory.list_tenants()}
    assert listed == {"default": None, "acme": TenantRateLimit(5, 10), "globex": TenantRateLimit.OFF}
    directory.set_tenant_rate_limit("acme", None)
    assert directory.tenant_rate_limits() == {"globex": TenantRateLimit.OFF}
    actions = [(row["tenant_id"], row["action"]) for row in directory.audit(None, 10)]
    assert actions[:3] == [
        ("acme", "tenant.set_limit"),
        ("globex", "tenant.set_limit"),
        ("acme", "tenant.set_limit"),
    ]


def test_a_limit_for_no_tenant_or_no_limit_at_all_is_refused(database: Database, clock: FakeClock) -> None:
    directory = DirectoryService(database, clock=clock)
    with pytest.raises(NotFound, match="unknown tenant"):
        directory.set_tenant_rate_limit("nobody", TenantRateLimit(1, 1))
    with pytest.raises(InvalidArgument, match="BURST"):
        directory.set_tenant_rate_limit("default", TenantRateLimit(10, 5))
    assert directory.tenant_rate_limits() == {}


# --- the commands ----------------------------------------------------------------------------------


def test_set_limit_shows_in_the_tenant_listing_and_clears(invoke: Invoker) -> None:
    invoke("tenant", "create", "acme", "--label", "Acme Corp")
    assert "acme: rate limit 50/s, burst 100" in invoke("tenant", "set-limit", "acme", "50").output
    assert "acme\tAcme Corp\t" in invoke("tenant", "list").output
    assert "rate limit: 50/s, burst 100" in invoke("tenant", "list").output
    invoke("tenant", "set-limit", "acme", "0")
    listed = {t["id"]: t["rate_limit"] for t in json.loads(invoke("tenant", "list", "--json").output)}
    assert listed == {"acme": "0", "default": None}
    assert "the default rate limit applies" in invoke("tenant", "set-limit", "acme", "--clear").output
    assert json.loads(invoke("tenant", "list", "--json").output)[0]["rate_limit"] is None


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("nobody", "5"), 1, "unknown tenant 'nobody'"),
        (("acme", "fast"), 2, "'fast' is not RPS[:BURST]"),
        (("acme", "10:5"), 2, "BURST must be at least RPS"),
        (("acme", "-3"), 2, "No such option"),
        (("acme",), 2, "give either RPS[:BURST] or --clear"),
        (("acme", "5", "--clear"), 2, "give either RPS[:BURST] or --clear"),
    ],
)
def test_set_limit_refuses_what_it_cannot_store(
    invoke: Invoker, args: tuple[str, ...], status: int, message: str
) -> None:
    invoke("tenant", "create", "acme")
    result = invoke("tenant", "set-limit", *args, status=status)
    assert message in result.output
    assert "Traceback" not in result.output
    assert json.loads(invoke("tenant", "list", "--json").output)[0]["rate_limit"] is None


@pytest.mark.parametrize(
    ("value", "message"),
    [("fast", "is not RPS[:BURST]"), ("10:5", "BURST must be at least RPS"), ("0:5", "takes no burst")],
)
def test_up_refuses_a_bad_tenant_rate_limit_before_starting_anything(
    invoke: Invoker, value: str, message: str
) -> None:
    result = invoke("up", "--tenant-rate-limit", value, status=2)
    assert "--tenant-rate-limit" in result.output
    assert message in result.output
    assert not invoke.data_dir.exists()


# --- ports another program holds -------------------------------------------------------------------


def _assert_refused_naming(result: subprocess.CompletedProcess[str], port: int, what: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: port {port} ({what}) on 127.0.0.1 is in use by another program" in result.stderr
    assert "Traceback" not in result.stderr


def _port_before_a_strangers(stranger: Callable[..., int]) -> tuple[socket.socket, int]:
    """A bound socket on some port P and a stranger listening on P + 1."""
    for _ in range(50):
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        port = int(first.getsockname()[1])
        try:
            return first, stranger(port=port + 1)
        except OSError:
            first.close()
    raise AssertionError("no two free neighbouring ports")


def test_up_with_a_worker_port_taken_fails_at_once_naming_it(
    tmp_path: Path, stranger: Callable[..., int]
) -> None:
    data_dir = tmp_path / "data"
    # Worker 1 would listen on the port after worker 0's: a stranger holds that one, and worker
    # 0's is held free for the command until it runs (other tests run beside this one).
    first, taken = _port_before_a_strangers(stranger)
    args = ["--grpc-port", str(first.getsockname()[1]), "--workers", "2", "--http-port", str(_free_port())]
    first.close()
    _assert_refused_naming(_run("up", "--data-dir", str(data_dir), *args), taken, "gRPC worker")
    # Before any worker started (each would have a log) or the database was made.
    assert not data_dir.exists()


def test_up_with_the_edge_port_taken_fails_at_once_naming_it(
    tmp_path: Path, stranger: Callable[..., int]
) -> None:
    taken = stranger()
    data_dir = tmp_path / "data"
    args = ["--grpc-port", str(_free_port()), "--workers", "1", "--http-port", str(taken)]
    _assert_refused_naming(_run("up", "--data-dir", str(data_dir), *args), taken, "REST edge")
    assert not data_dir.exists()


def test_serve_never_joins_a_program_that_would_share_its_port(
    tmp_path: Path, stranger: Callable[..., int]
) -> None:
    taken = stranger(reuse_port=True)
    for workers in ("1", "2"):
        result = _run(
            "serve", "--data-dir", str(tmp_path / "data"), "--grpc-port", str(taken), "--workers", workers
        )
        _assert_refused_naming(result, taken, "gRPC worker")


def test_a_worker_server_does_not_bind_a_port_another_program_shares(
    tmp_path: Path, stranger: Callable[..., int]
) -> None:
    """Without the check before it, the gRPC server itself refuses (no SO_REUSEPORT)."""
    app = build_application(Settings(data_dir=tmp_path / "data"))
    try:
        taken = stranger(reuse_port=True)
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{taken}"):
            create_server(f"127.0.0.1:{taken}", app.server_dependencies())
        # Workers of one `serve --workers N` do share theirs, with each other.
        shared = _free_port()
        options = ServerOptions(share_port=True)
        first = create_server(f"127.0.0.1:{shared}", app.server_dependencies(), options)
        second = create_server(f"127.0.0.1:{shared}", app.server_dependencies(), options)
        assert first.port == second.port == shared
        first.server.stop(0)
        second.server.stop(0)
    finally:
        app.close()


def test_a_worker_that_cannot_bind_ends_the_pool_start_naming_it(
    tmp_path: Path, stranger: Callable[..., int]
) -> None:
    """Taken between the check and the start: the pool reports the worker that exited, at once,
    instead of waiting out its start timeout."""
    taken = stranger()
    settings = Settings(data_dir=tmp_path / "data")
    pool = runtime.WorkerPool(
        settings, [runtime.WorkerSpec("127.0.0.1", taken, scheduler=False)], tmp_path / "logs"
    )
    with pytest.raises(runtime.StartFailed, match=rf"worker 0 \(gRPC port {taken}\) exited during start-up"):
        pool.start(timeout=120)
    assert f"port {taken} (gRPC worker)" in (tmp_path / "logs" / "worker-0.log").read_text()


# --- a running `orchestra up` ----------------------------------------------------------------------


class Up:
    """`orchestra up` on one data directory, with its output collected."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.http_port = _free_port()
        command = [str(ORCHESTRA), "up", "--data-dir", str(data_dir), "--workers", "1"]
        command += ["--http-port", str(self.http_port), "--grpc-port", str(_free_port()), *args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_environment()
        )
        self.output: list[str] = []
        assert self.process.stdout is not None
        stream = self.process.stdout
        self._reader = threading.Thread(target=lambda: self.output.extend(stream), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 90
        while not any("Press Ctrl-C" in line for line in self.output):
            assert self.process.poll() is None, "".join(self.output)
            assert time.monotonic() < deadline, "".join(self.output)
            time.sleep(0.05)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def edge_pid(self) -> int:
        children = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip().startswith("envoy"):
                        children.append(int(pid))
                except OSError:
                    continue
        assert len(children) == 1, children
        return children[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _token(url: str, consumer: dict[str, str]) -> str:
    form = {"grant_type": "client_credentials", **{k: consumer[k] for k in ("client_id", "client_secret")}}
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.post(url + "/oauth/token", data=form, timeout=5)
        if answer.status_code == 200:
            return str(answer.json()["access_token"])
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.3)


def _statuses(url: str, token: str, count: int) -> Counter[int]:
    """The statuses of `count` authenticated pings, once the edge accepts the token at all."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=10) as http:
        return Counter(http.get("/orchestra-api/ping", headers=headers).status_code for _ in range(count))


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + APPLY_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not seen within {APPLY_SECONDS:.0f} s"
        time.sleep(0.3)


def test_set_limit_on_a_running_up_applies_within_seconds_without_restarting_the_edge(
    invoke: Invoker,
) -> None:
    invoke("tenant", "create", "acme")
    invoke("tenant", "create", "globex")
    consumers = {
        tenant: json.loads(invoke("consumer", "create", "--tenant", tenant, "--json").output)
        for tenant in ("acme", "globex")
    }
    # A default small enough that a few calls in a row use it up.
    up = Up(invoke.data_dir, "--tenant-rate-limit", "1:2")
    try:
        tokens = {tenant: _token(up.rest_url, consumer) for tenant, consumer in consumers.items()}
        # The edge fetches the signing keys shortly after it starts; until then a token is a 401.
        _until(lambda: _statuses(up.rest_url, tokens["acme"], 1)[401] == 0)
        edge = up.edge_pid()
        assert _statuses(up.rest_url, tokens["acme"], 6)[429] > 0
        invoke("tenant", "set-limit", "acme", "0")
        _until(lambda: _statuses(up.rest_url, tokens["acme"], 20) == Counter({200: 20}))
        # The other tenant keeps the default.
        assert _statuses(up.rest_url, tokens["globex"], 6)[429] > 0
        invoke("tenant", "set-limit", "acme", "--clear")
        _until(lambda: _statuses(up.rest_url, tokens["acme"], 6)[429] > 0)
        assert up.edge_pid() == edge
        assert up.process.poll() is None
    finally:
        up.stop()
    assert "Traceback" not in "".join(up.output)
