"""A database that refuses writes is Unavailable, and the connections that saw it are replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from orchestra_server.errors import Unavailable
from orchestra_server.storage.database import StorageFaults, default_url, open_database
from orchestra_server.storage.migrate import upgrade


def test_connections_opened_before_a_fault_or_its_end_are_stale() -> None:
    faults = StorageFaults()
    assert not faults.stale(1.0)
    faults.fault()
    assert faults.failing
    assert faults.stale(1.0)
    faults.recovered()
    assert not faults.failing
    # Opened during the fault (SQLite opened it read-only): replaced after the recovery too.
    assert faults.stale(1.0)


def test_a_read_only_sqlite_file_is_unavailable_until_a_probe_write_succeeds(tmp_path: Path) -> None:
    database = open_database(default_url(tmp_path))
    upgrade(database)

    # Every connection refuses writes with SQLite's READONLY code, as one opened on a file it
    # could not open for writing does.
    @event.listens_for(database.engine, "connect")
    def read_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")

    database.engine.dispose()
    try:
        database.check_writable()  # reading works: no fault is known yet
        with pytest.raises(Unavailable), database.writing() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
        assert database.faults.failing
        with pytest.raises(Unavailable):
            database.check_writable()
        assert database.faults.failing
    finally:
        database.dispose()


def test_other_sqlite_errors_are_not_outages(tmp_path: Path) -> None:
    database = open_database(default_url(tmp_path))
    try:
        with pytest.raises(OperationalError, match="no such table"), database.writing() as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")
        assert not database.faults.failing
    finally:
        database.dispose()


def test_a_fault_reported_while_a_stale_connection_is_replaced_does_not_fail_the_checkout(
    tmp_path: Path,
) -> None:
    database = open_database(default_url(tmp_path))
    try:
        with database.reading() as conn:  # a pooled connection, opened before the fault
            conn.exec_driver_sql("SELECT 1")
        database.faults.fault()

        # Another thread's write fails (and reports the fault again) while this checkout opens
        # the replacement: the replacement was opened before that report, yet it is the newest
        # connection there can be. Were it refused too, the pool would give up after its second
        # attempt with an error that is no outage at all.
        @event.listens_for(database.engine, "connect")
        def fault_reported_meanwhile(_dbapi_connection: Any, _record: Any) -> None:
            database.faults.fault()

        for _ in range(3):
            with database.reading() as conn:
                assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        # A connection opened during the fault is still replaced once writes work again.
        event.remove(database.engine, "connect", fault_reported_meanwhile)
        opened = []
        event.listen(database.engine, "connect", lambda dbapi, _record: opened.append(dbapi))
        database.faults.recovered()
        with database.reading() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert len(opened) == 1
    finally:
        database.dispose()
