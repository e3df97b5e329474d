"""Storage that stops taking writes, then comes back: a real worker answers UNAVAILABLE while it is
gone, says NOT_SERVING on its health check, and serves again by itself within seconds.

The SQLite fault is real: the database file and its write-ahead log are made immutable
(`chattr +i`), which refuses writes even to root, as a read-only or failing disk would. The
PostgreSQL faults are a loopback proxy in front of the shared server that the test stops (every
connection through it cut, new ones refused) and starts again, and a dedicated database whose
connection limit drops to 0 with its sessions terminated (what a server at `max_connections` or
shutting down answers); the server itself is never stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestra_server import errors
from orchestra_server.client import GrpcOrchestraClient
from orchestra_server.storage.database import open_database
from orchestra_server.storage.migrate import upgrade
from tests.conftest import EXAMPLES, PG_ADMIN_URL, require_postgres
from tests.integration.test_crash_safety import Server

# Fault cycles per database; `ORCHESTRA_FAULT_CYCLES` raises it for a soak run.
CYCLES = int(os.environ.get("ORCHESTRA_FAULT_CYCLES", "2"))
# How long the fault lasts: long enough for the health check (every 2 s) to see it.
FAULT_SECONDS = 5.0
# Once the fault is gone the worker must serve again within this.
RECOVERY_LIMIT_SECONDS = 10.0
# Writes in a row that must all succeed after recovery (before, about 1 in 6 failed).
WRITES_AFTER_RECOVERY = 30
CONCURRENT_CALLS = 16


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(answer.status)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout:.0f} s")


def _write(client: GrpcOrchestraClient) -> str:
    """One write's outcome: OK, or the error it answered."""
    try:
        client.start_process("three_step", {"n": 1})
        return "OK"
    except errors.OrchestraError as exc:
        return _outcome(exc)


def _read(client: GrpcOrchestraClient) -> str:
    try:
        client.list_instances()
        return "OK"
    except errors.OrchestraError as exc:
        return _outcome(exc)


def _outcome(exc: errors.OrchestraError) -> str:
    """The error's name; with its message when it is not the expected Unavailable, so a failure
    says what the worker answered."""
    name = type(exc).__name__
    return name if isinstance(exc, errors.Unavailable) else f"{name}: {exc}"


def _fault_cycles(server: Server, client: GrpcOrchestraClient, fault: Callable[[bool], None]) -> list[float]:
    """Runs CYCLES fault cycles; returns the seconds from the end of each fault to serving again."""
    target = f"127.0.0.1:{server.port}"
    recoveries = []
    for _ in range(CYCLES):
        assert _write(client) == "OK"
        fault(True)
        try:
            # Concurrent calls, so the worker opens connections of its pool during the fault
            # (SQLite opens them read-only); reads still work.
            with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
                outcomes = set(pool.map(lambda _: _write(client), range(3 * CONCURRENT_CALLS)))
                reads = set(pool.map(lambda _: _read(client), range(3 * CONCURRENT_CALLS)))
            assert outcomes == {"Unavailable"}, outcomes
            assert reads <= {"OK", "Unavailable"}, reads
            _wait_for(lambda: _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, 8, "NOT_SERVING")
            time.sleep(FAULT_SECONDS)
            assert _write(client) == "Unavailable"
        finally:
            fault(False)
        took = _wait_for(
            lambda: _health(target) == health_pb2.HealthCheckResponse.SERVING and _write(client) == "OK",
            RECOVERY_LIMIT_SECONDS,
            "serving again after the fault",
        )
        recoveries.append(took)
        with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
            outcomes_after = list(pool.map(lambda _: _write(client), range(WRITES_AFTER_RECOVERY)))
        assert outcomes_after == ["OK"] * WRITES_AFTER_RECOVERY, outcomes_after
    print(f"recovery after the fault: {', '.join(f'{t:.1f} s' for t in recoveries)}")
    return recoveries


def _serve(server: Server) -> Iterator[GrpcOrchestraClient]:
    server.cli("definition", "deploy", str(EXAMPLES / "three_step.yaml"))
    credentials = json.loads(server.cli("consumer", "create", "--tenant", "default", "--json"))
    server.start()
    client = GrpcOrchestraClient(
        f"127.0.0.1:{server.port}", credentials["client_id"], credentials["client_secret"], timeout=15
    )
    try:
        yield client
    finally:
        client.close()
        server.stop()


def _can_make_immutable(directory: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    probe = directory / "immutable-probe"
    probe.write_text("x")
    made = subprocess.run([chattr, "+i", str(probe)], capture_output=True).returncode == 0
    if made:
        try:
            with probe.open("a") as file:
                file.write("y")
            made = False  # the flag does not stop writes here
        except OSError:
            pass
        subprocess.run([chattr, "-i", str(probe)], check=True)
    probe.unlink()
    return made


@pytest.mark.timeout(60 + 30 * CYCLES)
def test_sqlite_that_cannot_be_written_answers_unavailable_and_heals(tmp_path: Path) -> None:
    if not _can_make_immutable(tmp_path):
        pytest.skip("this filesystem or user cannot make a file immutable (chattr +i)")
    server = Server(tmp_path / "data", None)
    database_file = tmp_path / "data" / "orchestra.db"
    chattr = shutil.which("chattr")
    assert chattr is not None

    def fault(on: bool) -> None:
        files = [str(p) for p in (database_file, Path(f"{database_file}-wal")) if p.exists()]
        subprocess.run([chattr, "+i" if on else "-i", *files], check=True)

    for client in _serve(server):
        try:
            _fault_cycles(server, client, fault)
        finally:
            fault(False)


class TcpProxy:
    """A loopback proxy that can be stopped (listener closed, every connection cut) and started again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            cut, self._open = self._open, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied_postgres_url() -> Iterator[tuple[str, TcpProxy]]:
    """A dedicated, migrated database reached through a proxy the test can stop."""
    require_postgres()
    name = f"orchestra_fault_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    direct = make_url(PG_ADMIN_URL).set(database=name)
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxy.start()
    url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    database = open_database(url)
    upgrade(database)
    database.dispose()
    try:
        yield url, proxy
    finally:
        proxy.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(60 + 30 * CYCLES)
def test_postgres_refusing_connections_answers_unavailable_and_heals(
    tmp_path: Path, proxied_postgres_url: tuple[str, TcpProxy]
) -> None:
    url, proxy = proxied_postgres_url
    server = Server(tmp_path / "data", url)

    def fault(on: bool) -> None:
        if on:
            proxy.stop()
        elif not proxy.running:
            proxy.start()

    for client in _serve(server):
        _fault_cycles(server, client, fault)


@pytest.fixture
def limited_postgres_url() -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A dedicated, migrated database owned by a role of its own, whose connections the test can
    refuse: the connection limit binds every role but a superuser."""
    require_postgres()
    name = f"orchestra_fault_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name, username=name).render_as_string(hide_password=False)
    database = open_database(url)
    upgrade(database)
    database.dispose()

    def fault(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" CONNECTION LIMIT {0 if on else -1}'))
            if on:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": name},
                )

    try:
        yield url, fault
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(60 + 30 * CYCLES)
def test_postgres_at_its_connection_limit_answers_unavailable_and_heals(
    tmp_path: Path, limited_postgres_url: tuple[str, Callable[[bool], None]]
) -> None:
    url, fault = limited_postgres_url
    server = Server(tmp_path / "data", url)
    for client in _serve(server):
        try:
            _fault_cycles(server, client, fault)
        finally:
            fault(False)
