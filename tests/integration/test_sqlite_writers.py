"""SQLite writers queue for their turn instead of failing or sleeping on the database's lock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from orchestra_server import errors
from orchestra_server.storage.database import Database, WriterQueue, open_database
from orchestra_server.storage.migrate import upgrade

THREADS_PER_DATABASE = 6
WRITES_PER_THREAD = 40


def impatient(db: Database) -> Database:
    """Makes SQLite itself give up at once on a taken lock, so only the queue can avoid an error."""

    @event.listens_for(db.engine, "connect")
    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.close()

    return db


def test_writers_of_two_databases_on_one_file_take_turns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orchestra.db'}"
    setup = open_database(url)
    upgrade(setup)
    with setup.writing() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    setup.dispose()
    # Two databases stand for two worker processes: each has its own lock file handle.
    databases = [impatient(open_database(url)), impatient(open_database(url))]
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS_PER_DATABASE * len(databases))

    def writer(db: Database) -> None:
        start.wait()
        for _ in range(WRITES_PER_THREAD):
            try:
                with db.writing() as conn:
                    # A read then a write: a lost update shows as a short count.
                    n = conn.execute(text("SELECT n FROM counter")).scalar_one()
                    conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
            except BaseException as exc:  # collected for the assertion
                failures.append(exc)

    threads = [
        threading.Thread(target=writer, args=(db,)) for db in databases for _ in range(THREADS_PER_DATABASE)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        with databases[0].reading() as conn:
            total = conn.execute(text("SELECT n FROM counter")).scalar_one()
        assert total == THREADS_PER_DATABASE * len(databases) * WRITES_PER_THREAD
        assert (tmp_path / "orchestra.db-writer.lock").exists()
    finally:
        for db in databases:
            db.dispose()


def test_a_writer_that_waits_too_long_is_told_the_database_is_busy() -> None:
    queue = WriterQueue(None, timeout_seconds=0.05)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with queue.turn():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        with pytest.raises(errors.Overloaded), queue.turn():
            pass
    finally:
        release.set()
        holder.join()
    with queue.turn():  # free again once the holder is done
        pass
