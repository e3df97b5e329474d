"""Races with real threads on real databases: one signal wins, a join fires once, two processes stay safe."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestra_server import errors
from orchestra_server.bootstrap import utc_now
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.storage.database import Database, open_database
from tests.conftest import PAGE_TOKEN_KEY
from tests.integration.test_processes import FORK_JOIN, THREE_STEP

ALICE = Caller("default", "alice-site")


def run_together(actions: list[Callable[[], object]]) -> list[object]:
    """Runs the actions on their own threads, released at once; returns each result or exception."""
    barrier = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = actions[i]()
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def service(database: Database) -> ProcessService:
    return ProcessService(
        database, clock=utc_now, new_id=lambda: str(uuid.uuid4()), page_token_key=PAGE_TOKEN_KEY
    )


def deploy(database: Database, tmp_path: Path, *definitions: dict[str, object]) -> None:
    paths = []
    for d in definitions:
        path = tmp_path / f"{d['id']}.yaml"
        path.write_text(yaml.safe_dump(d))
        paths.append(path)
    DefinitionService(database, clock=utc_now).deploy(paths)


def test_racing_signals_on_one_token_advance_once(database: Database, tmp_path: Path) -> None:
    deploy(database, tmp_path, THREE_STEP)
    processes = service(database)
    for _ in range(5):
        instance_id = processes.start_process(ALICE, "three_step", {})
        [token] = processes.get_instance(ALICE, instance_id).tokens
        results = run_together([lambda t=token.id: processes.signal_token(ALICE, t)] * 6)
        winners = [r for r in results if r is None]
        losers = [r for r in results if isinstance(r, errors.TokenNotParked)]
        assert (len(winners), len(losers)) == (1, 5), results
        assert processes.get_instance(ALICE, instance_id).status == "completed"


def test_concurrent_arrivals_fire_a_join_exactly_once(database: Database, tmp_path: Path) -> None:
    deploy(database, tmp_path, FORK_JOIN)
    processes = service(database)
    for _ in range(5):
        instance_id = processes.start_process(ALICE, "fork_join", {})
        tokens = processes.get_instance(ALICE, instance_id).tokens
        assert sorted(t.node_id for t in tokens) == ["a", "b"]
        results = run_together([lambda t=t: processes.signal_token(ALICE, t.id) for t in tokens])
        assert results == [None, None]
        after = processes.get_instance(ALICE, instance_id).tokens
        assert [(t.node_id, t.status) for t in after] == [("after", "parked")]


def test_set_variable_races_end_in_one_serial_outcome(database: Database, tmp_path: Path) -> None:
    deploy(database, tmp_path, THREE_STEP)
    processes = service(database)
    instance_id = processes.start_process(ALICE, "three_step", {})
    writers = [lambda i=i: processes.set_variable(ALICE, instance_id, "winner", i) for i in range(8)]
    assert run_together(writers) == [None] * 8
    assert processes.get_variables(ALICE, instance_id)["winner"] in range(8)


WORKER = """
import sys, uuid
from orchestra_server import errors
from orchestra_server.bootstrap import utc_now
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.storage.database import open_database
db = open_database(sys.argv[1])
processes = ProcessService(db, clock=utc_now, new_id=lambda: str(uuid.uuid4()), page_token_key=bytes(32))
won = 0
for token_id in sys.argv[2:]:
    try:
        processes.signal_token(Caller("default", "worker"), token_id)
        won += 1
    except errors.TokenNotParked:
        pass
print(won)
"""


@pytest.mark.postgres
def test_two_server_processes_on_one_postgres_signal_each_token_once(
    postgres_url: str, tmp_path: Path
) -> None:
    database = open_database(postgres_url)
    try:
        from tests.conftest import reset_postgres

        reset_postgres(database)
        deploy(database, tmp_path, THREE_STEP)
        processes = service(database)
        tokens = []
        for _ in range(40):
            instance_id = processes.start_process(ALICE, "three_step", {})
            tokens.append(processes.get_instance(ALICE, instance_id).tokens[0].id)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, postgres_url, *order],
                stdout=subprocess.PIPE,
                text=True,
            )
            for order in (tokens, list(reversed(tokens)), tokens[::2] + tokens[1::2])
        ]
        won = [int(w.communicate(timeout=120)[0]) for w in workers]
        assert sum(won) == len(tokens)
        statuses = {s.status for s in processes.list_instances(ALICE, page_size=1000).instances}
        assert statuses == {"completed"}
    finally:
        database.dispose()
