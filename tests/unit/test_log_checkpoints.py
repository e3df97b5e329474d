"""SQLite's write-ahead log is copied into the database file by a checkpointer of its own, not by
the commits: a commit only appends, and the log still starts over from its beginning."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_server.bootstrap import build_application
from orchestra_server.settings import Settings
from orchestra_server.storage.database import (
    SQLITE_COMMIT_CHECKPOINT_PAGES,
    Database,
    LogCheckpointer,
    default_url,
    open_database,
)
from tests.conftest import PG_ADMIN_URL, require_postgres


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(default_url(tmp_path))
    with database.writing() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    path = database.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:  # the table into the file, the log emptied
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    try:
        yield database
    finally:
        database.dispose()


def _write(database: Database, commits: int) -> None:
    for n in range(commits):
        with database.writing() as conn:
            conn.exec_driver_sql("INSERT INTO notes (body) VALUES (?)", (f"note {n} " + "x" * 500,))


def _notes_in_the_file_alone(database: Database, copy: Path) -> int:
    """The rows the database file holds without its log: what checkpoints have copied into it."""
    path = database.engine.url.database
    assert path is not None
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as conn:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])


def test_commits_leave_the_log_to_the_checkpointer(database: Database, tmp_path: Path) -> None:
    with database.reading() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == SQLITE_COMMIT_CHECKPOINT_PAGES
    _write(database, 200)
    assert _notes_in_the_file_alone(database, tmp_path / "before.db") == 0

    checkpointer = database.log_checkpointer()
    assert checkpointer is not None
    in_log, copied = checkpointer.checkpoint()
    checkpointer.stop()

    assert in_log >= 200
    assert copied == in_log
    assert _notes_in_the_file_alone(database, tmp_path / "after.db") == 200


def _round_while_the_turn_is_held(database: Database, restart_pages: int) -> tuple[bool, LogCheckpointer]:
    """Runs a checkpoint round while this test holds the writers' turn: whether the round waited
    for the turn, and the checkpointer (its round finished once the turn was let go)."""
    path = database.engine.url.database
    assert path is not None
    assert database.writers is not None
    checkpointer = LogCheckpointer(path, database.writers, restart_pages=restart_pages)
    with database.writers.turn():
        round_ = threading.Thread(target=checkpointer.checkpoint_round)
        round_.start()
        round_.join(0.5)
        waited = round_.is_alive()
    round_.join(10)
    assert not round_.is_alive()
    return waited, checkpointer


def test_a_long_log_is_finished_in_the_writers_turn_and_starts_over(database: Database) -> None:
    _write(database, 100)
    waited, checkpointer = _round_while_the_turn_is_held(database, restart_pages=50)
    try:
        assert waited, "the round must finish a long log in the writers' turn"
        _write(database, 1)  # the next writer starts the log over
        in_log, _copied = checkpointer.checkpoint()
        assert 0 < in_log < 10
    finally:
        checkpointer.stop()


def test_a_short_log_is_never_checkpointed_in_the_writers_turn(database: Database) -> None:
    _write(database, 20)
    waited, checkpointer = _round_while_the_turn_is_held(database, restart_pages=10_000)
    checkpointer.stop()
    assert not waited


def test_a_missing_database_is_never_created_and_the_checkpointer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "gone" / "orchestra.db"
    checkpointer = LogCheckpointer(str(missing), None, interval=0.01)
    with caplog.at_level(logging.WARNING, logger="orchestra.storage"):
        checkpointer.start()
        deadline = time.monotonic() + 10
        while checkpointer.rounds < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        checkpointer.stop()
    assert checkpointer.rounds >= 5
    assert not missing.exists()
    # One warning for the whole failing stretch, not one a round.
    warnings = [r for r in caplog.records if "checkpointing the database log failed" in r.getMessage()]
    assert len(warnings) == 1


def test_a_serving_application_checkpoints_while_started(tmp_path: Path) -> None:
    app = build_application(Settings(data_dir=tmp_path))
    assert app.checkpointer is not None

    def running() -> bool:
        return any(t.name == "orchestra-checkpoint" for t in threading.enumerate())

    assert not running()
    app.start()
    try:
        assert running()
    finally:
        app.close()
    assert not running()


def test_postgres_has_no_log_to_checkpoint() -> None:
    require_postgres()
    database = open_database(PG_ADMIN_URL)
    try:
        assert database.log_checkpointer() is None
    finally:
        database.dispose()
