"""10,000 timers due at once, three worker processes on one PostgreSQL: each fires once, none early."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestra_server.runtime import wait_healthy
from orchestra_server.storage.database import open_database
from tests.conftest import reset_postgres
from tests.integration.test_crash_safety import free_port
from tests.integration.test_timers import TIMER

ORCHESTRA = Path(sys.executable).parent / "orchestra"
TIMERS = 10_000
WORKERS = 3


def seed_parked_timers(url: str, definition_pk: int, due_at: datetime, count: int) -> None:
    """Instances of `cool_off` parked on their timer, written in bulk as the engine would leave them."""
    database = open_database(url)
    now = datetime.now(UTC)
    try:
        with database.engine.begin() as conn:
            instances = [
                {"id": str(uuid.uuid4()), "tenant": "default", "pk": definition_pk, "now": now}
                for _ in range(count)
            ]
            conn.execute(
                text(
                    "INSERT INTO instances"
                    " (id, tenant_id, definition_id, definition_pk, status, created_at, updated_at)"
                    " VALUES (:id, :tenant, 'cool_off', :pk, 'running', :now, :now)"
                ),
                instances,
            )
            conn.execute(
                text(
                    "INSERT INTO tokens"
                    " (id, instance_seq, tenant_id, node_id, status, ordinal, arrived_by, due_at)"
                    " SELECT gen_random_uuid()::text, seq, tenant_id, 'cool', 'parked', 1, 0, :due"
                    " FROM instances WHERE definition_id = 'cool_off'"
                ),
                {"due": due_at},
            )
    finally:
        database.dispose()


@pytest.mark.postgres
def test_ten_thousand_due_timers_fire_exactly_once_across_three_workers(
    postgres_url: str, tmp_path: Path
) -> None:
    database = open_database(postgres_url)
    reset_postgres(database)
    database.dispose()
    data_dir = tmp_path / "data"
    definition = tmp_path / "cool_off.yaml"
    definition.write_text(json.dumps(TIMER))
    common = ["--data-dir", str(data_dir), "--db", postgres_url]
    subprocess.run([str(ORCHESTRA), "definition", "deploy", str(definition), *common], check=True, timeout=60)
    database = open_database(postgres_url)
    with database.engine.connect() as conn:
        pk = conn.execute(text("SELECT pk FROM definitions WHERE definition_id = 'cool_off'")).scalar_one()
    database.dispose()
    # Due a few seconds from now, once the workers are up: firing any earlier would be a bug.
    due_at = datetime.now(UTC) + timedelta(seconds=8)
    seed_parked_timers(postgres_url, pk, due_at, TIMERS)
    port = free_port()
    workers = subprocess.Popen(
        [str(ORCHESTRA), "serve", "--workers", str(WORKERS), "--grpc-port", str(port), *common],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = open_database(postgres_url)
    try:
        wait_healthy(f"127.0.0.1:{port}", 60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with database.engine.connect() as conn:
                left = conn.execute(text("SELECT COUNT(*) FROM tokens WHERE node_id = 'cool'")).scalar_one()
            if left == 0:
                break
            time.sleep(0.5)
        with database.engine.connect() as conn:
            fires = conn.execute(text("SELECT instance_id, at FROM audit WHERE action = 'token.fire'")).all()
            moved = conn.execute(text("SELECT COUNT(*) FROM tokens WHERE node_id = 'task'")).scalar_one()
            actors = conn.execute(
                text("SELECT COUNT(DISTINCT actor) FROM audit WHERE action = 'token.fire'")
            ).scalar()
    finally:
        workers.terminate()
        workers.wait(60)
        database.dispose()
    assert len(fires) == TIMERS, "every timer fires once"
    assert len({instance for instance, _ in fires}) == TIMERS, "no timer fires twice"
    assert moved == TIMERS
    assert actors == 1  # recorded as the scheduler
    early = [at for _, at in fires if at < due_at]
    assert early == [], f"{len(early)} timers fired before they were due"
