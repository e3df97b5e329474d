"""Pooled PostgreSQL connections: checked after idling, discarded when they fail in use."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import Connection, text

from orchestra_server import errors
from orchestra_server.storage.database import Database, open_database

pytestmark = pytest.mark.postgres

IDLE = 0.2


def backend_of(database: Database) -> int:
    with database.reading() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(url: str, backend: int) -> None:
    killer = open_database(url, pool_size=1)
    try:
        with killer.reading() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
    finally:
        killer.dispose()
    time.sleep(0.2)  # the backend exits asynchronously


def test_a_connection_lost_while_idle_is_replaced_before_use(postgres_url: str) -> None:
    database = open_database(postgres_url, pool_size=1, ping_after_idle=IDLE)
    try:
        lost = backend_of(database)
        terminate(postgres_url, lost)
        time.sleep(IDLE)
        assert backend_of(database) != lost  # checked, found dead, replaced: no error
    finally:
        database.dispose()


def test_a_connection_used_moments_ago_is_not_checked_and_fails_once(postgres_url: str) -> None:
    database = open_database(postgres_url, pool_size=1, ping_after_idle=60)
    try:
        lost = backend_of(database)
        terminate(postgres_url, lost)
        # Not idle long enough to be checked: the request finds it dead and answers 503 ...
        with pytest.raises(errors.Unavailable):
            backend_of(database)
        # ... and the connection is gone from the pool: the next request gets a new one.
        assert backend_of(database) != lost
    finally:
        database.dispose()


def _in_transaction(conn: Connection) -> bool:
    # The server's view of the session, as the driver last heard it.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    return bool(dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


def test_reads_take_no_transaction_and_writes_still_do(postgres_url: str) -> None:
    # Reads skip BEGIN and COMMIT (two round trips); on the one pooled connection, a write
    # afterwards is a real transaction again, and a failed one leaves nothing behind.
    database = open_database(postgres_url, pool_size=1)
    try:
        with database.reading() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            assert not _in_transaction(conn)
        seen: list[bool] = []

        def failing_write() -> None:
            with database.writing() as conn:
                conn.execute(text("CREATE TABLE read_mode_probe (x int)"))
                seen.append(_in_transaction(conn))
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            failing_write()
        assert seen == [True]
        with database.reading() as conn:
            assert conn.execute(text("SELECT to_regclass('read_mode_probe')")).scalar_one() is None
    finally:
        database.dispose()
