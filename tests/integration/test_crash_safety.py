"""kill -9 the service at random moments under load: acknowledged writes survive, nothing is half-applied."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestra_server import errors
from orchestra_server.client import GrpcOrchestraClient, RestOrchestraClient
from orchestra_server.client.contract import OrchestraClient
from orchestra_server.edge import EdgeSettings, EnvoyProcess, Upstream
from orchestra_server.runtime import wait_healthy
from orchestra_server.storage.database import open_database
from tests.conftest import EXAMPLES, reset_postgres

ORCHESTRA = Path(sys.executable).parent / "orchestra"
# Each cycle restarts the service (about 2 s); `ORCHESTRA_CRASH_CYCLES` raises it for a soak run.
CYCLES = int(os.environ.get("ORCHESTRA_CRASH_CYCLES", "3"))
# How long a cycle's drivers may take to have their first start acknowledged.
LOAD_START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ledger:
    """What the server acknowledged: these must all be visible after any crash."""

    started: list[str] = field(default_factory=list)
    signalled: dict[str, str] = field(default_factory=dict)  # token id -> instance id
    # (instance id, variable) -> every value written, in order, with whether it was acknowledged.
    # Each driver writes its own variable, so its writes to it are in a serial order.
    writes: dict[tuple[str, str], list[tuple[int, bool]]] = field(default_factory=dict)


class Server:
    def __init__(self, data_dir: Path, db_url: str | None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.db_args = ["--db", db_url] if db_url else []
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [str(ORCHESTRA), *args, "--data-dir", str(self.data_dir), *self.db_args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(ORCHESTRA),
                "serve",
                "--workers",
                "1",
                "--grpc-port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.db_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ORCHESTRA_LOG_LEVEL": "WARNING"},
        )
        wait_healthy(f"127.0.0.1:{self.port}", 30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def drive(client: OrchestraClient, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    """Starts, writes and signals until the server goes away; records only what was acknowledged."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            if not ledger.started or rng.random() < 0.5:
                ledger.started.append(client.start_process("three_step", {"n": len(ledger.started)}))
                continue
            instance_id = rng.choice(ledger.started)
            view = client.get_instance(instance_id)
            parked = [t for t in view.tokens if t.status == "parked"]
            if not parked:
                continue
            if rng.random() < 0.3:
                value = rng.randrange(1_000_000)
                history = ledger.writes.setdefault((instance_id, f"v{seed}"), [])
                history.append((value, False))
                client.set_variable(instance_id, f"v{seed}", value)
                history[-1] = (value, True)
                continue
            client.signal_token(parked[0].id)
            ledger.signalled[parked[0].id] = instance_id
        except (errors.Unavailable, errors.OrchestraError, OSError):
            # Unacknowledged: the server may or may not have applied it, both are fine.
            if stop.is_set():
                return
            time.sleep(0.01)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, db: str) -> Iterator[str | None]:
    if db == "sqlite":
        yield None
        return
    url = request.getfixturevalue("postgres_url")
    database = open_database(url)
    reset_postgres(database)
    database.dispose()
    yield url


# Through the edge on both databases (what consumer sites see); direct gRPC once more on SQLite.
@pytest.mark.parametrize(
    ("transport", "db"),
    [("rest", "sqlite"), pytest.param("rest", "postgres", marks=pytest.mark.postgres), ("grpc", "sqlite")],
)
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, transport: str, db_url: str | None) -> None:
    server = Server(tmp_path / "data", db_url)
    server.cli("definition", "deploy", str(EXAMPLES / "three_step.yaml"))
    credentials = json.loads(server.cli("consumer", "create", "--tenant", "default", "--json"))
    server.start()
    edge: EnvoyProcess | None = None
    if transport == "rest":
        edge = EnvoyProcess(
            # No per-tenant budget: the check afterwards reads every instance as fast as it can.
            EdgeSettings(
                rest_port=free_port(),
                upstreams=(Upstream("127.0.0.1", server.port),),
                tenant_rate_limit=None,
            ),
            tmp_path / "edge",
        )
        edge.start()
    ledger = Ledger()

    def client() -> OrchestraClient:
        if edge is not None:
            return RestOrchestraClient(
                edge.rest_url, credentials["client_id"], credentials["client_secret"], timeout=5
            )
        return GrpcOrchestraClient(
            f"127.0.0.1:{server.port}", credentials["client_id"], credentials["client_secret"], timeout=5
        )

    rng = random.Random(20261125)
    try:
        for cycle in range(CYCLES):
            stop = threading.Event()
            drivers = [client() for _ in range(3)]
            threads = [
                threading.Thread(target=drive, args=(d, ledger, stop, cycle * 10 + i))
                for i, d in enumerate(drivers)
            ]
            for t in threads:
                t.start()
            # The kill comes at a random moment once this cycle's load flows: on a busy machine the
            # drivers' first calls (a token each) can take longer than the whole random window.
            acknowledged = len(ledger.started)
            flowing_by = time.monotonic() + LOAD_START_SECONDS
            while len(ledger.started) == acknowledged and time.monotonic() < flowing_by:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.3, 1.2))
            server.kill()
            stop.set()
            for t in threads:
                t.join(30)
            for d in drivers:
                d.close()
            server.start()
        check = client()
        try:
            verify(check, ledger)
        finally:
            check.close()
        assert ledger.started, "the load never got going"
        assert ledger.signalled, "no signal was ever acknowledged"
    finally:
        if edge is not None:
            edge.stop()
        server.stop()
    verify_storage(db_url or f"sqlite:///{tmp_path / 'data' / 'orchestra.db'}")


def verify(client: OrchestraClient, ledger: Ledger) -> None:
    for instance_id in ledger.started:
        client.get_instance(instance_id)  # NotFound would fail the test
    for token_id, instance_id in ledger.signalled.items():
        view = client.get_instance(instance_id)
        assert token_id not in {t.id for t in view.tokens}, "an acknowledged signal was lost"
        assert view.status == "completed"
    for (instance_id, name), history in ledger.writes.items():
        acknowledged = [i for i, (_, acked) in enumerate(history) if acked]
        if not acknowledged:
            continue
        # The last acknowledged value, or a later write the crash cut off before its answer.
        allowed = {value for value, _ in history[acknowledged[-1] :]}
        assert client.get_variables(instance_id).get(name) in allowed


def verify_storage(url: str) -> None:
    """Nothing half-applied: a running instance has live tokens, a completed one has none."""
    database = open_database(url)
    try:
        with database.engine.connect() as conn:
            broken = conn.execute(
                text(
                    "SELECT i.id, i.status, COUNT(t.id) AS live FROM instances i "
                    "LEFT JOIN tokens t ON t.instance_seq = i.seq GROUP BY i.id, i.status "
                    "HAVING (i.status = 'running' AND COUNT(t.id) = 0) "
                    "OR (i.status = 'completed' AND COUNT(t.id) > 0)"
                )
            ).all()
            orphans = conn.execute(
                text(
                    "SELECT COUNT(*) FROM tokens t LEFT JOIN instances i ON i.seq = t.instance_seq "
                    "WHERE i.seq IS NULL"
                )
            ).scalar_one()
    finally:
        database.dispose()
    assert broken == []
    assert orphans == 0
