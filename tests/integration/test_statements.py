"""Statements run on the driver's cursor store and read exactly what SQLAlchemy would, and fail alike."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from orchestra_server import errors
from orchestra_server.engine.model import InstanceStatus
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database, open_database
from orchestra_server.storage.statements import Sql, bind_time, execute, read_time

MOMENTS = [
    datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC),
    datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC),
    # Another offset: stored as the same instant in UTC.
    datetime(2026, 11, 26, 3, 2, 3, 1, tzinfo=timezone(timedelta(hours=2))),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def _instance(conn: object, instance_id: str, now: datetime) -> int:
    return repo.insert_instance(
        conn,  # type: ignore[arg-type]
        instance_id=instance_id,
        tenant_id="default",
        definition_id="some_process",
        definition_pk=1,
        status=InstanceStatus.RUNNING,
        now=now,
    )


@pytest.fixture
def with_definition(database: Database) -> Database:
    with database.writing() as conn:
        repo.insert_definition_version(
            conn,
            tenant_key="",
            definition_id="some_process",
            version=1,
            content="{}",
            content_hash="x",
            source=None,
            now=MOMENTS[0],
        )
    return database


def test_times_round_trip_and_match_what_the_mapped_column_reads(with_definition: Database) -> None:
    database = with_definition
    with database.writing() as conn:
        for i, moment in enumerate(MOMENTS):
            _instance(conn, f"i-{i}", moment)
    with database.reading() as conn:
        # Read back through the mapped UtcDateTime column: the stored form is the one it expects.
        mapped = conn.execute(select(repo.instances_t.c.id, repo.instances_t.c.created_at)).all()
        raw = execute(conn, Sql("SELECT id, created_at FROM instances"), {}).fetchall()
    assert dict(mapped) == {f"i-{i}": m.astimezone(UTC) for i, m in enumerate(MOMENTS)}
    assert {row[0]: read_time(row[1]) for row in raw} == dict(mapped)


def test_stored_times_sort_and_compare_as_times(with_definition: Database) -> None:
    database = with_definition
    with database.writing() as conn:
        for i, moment in enumerate(MOMENTS):
            _instance(conn, f"i-{i}", moment)
    cutoff = datetime(2026, 11, 26, 1, 2, 3, 1, tzinfo=UTC)
    with database.reading() as conn:
        earlier = execute(
            conn,
            Sql("SELECT id FROM instances WHERE created_at < :cutoff ORDER BY created_at"),
            {"cutoff": bind_time(conn, cutoff)},
        ).fetchall()
    assert [row[0] for row in earlier] == ["i-3", "i-0"]


def test_a_naive_time_is_refused(database: Database) -> None:
    with database.reading() as conn, pytest.raises(ValueError, match="naive"):
        bind_time(conn, datetime(2026, 1, 1))


def test_driver_errors_come_out_as_sqlalchemy_errors_and_roll_back(with_definition: Database) -> None:
    database = with_definition
    with database.writing() as conn:
        _instance(conn, "taken", MOMENTS[0])

    def new_then_taken() -> None:
        with database.writing() as conn:
            _instance(conn, "new-one", MOMENTS[0])
            _instance(conn, "taken", MOMENTS[0])

    def unknown_table() -> None:
        with database.reading() as conn:
            execute(conn, Sql("SELECT nothing FROM nowhere"), {})

    with pytest.raises(sa_exc.IntegrityError):
        new_then_taken()
    with pytest.raises(sa_exc.ProgrammingError if database.is_postgres else sa_exc.OperationalError):
        unknown_table()
    with database.reading() as conn:
        ids = conn.execute(text("SELECT id FROM instances")).scalars().all()
    assert ids == ["taken"]  # the failed transaction left nothing behind


@pytest.mark.postgres
def test_a_lost_postgres_connection_is_invalidated_and_reported_unavailable(postgres_url: str) -> None:
    database = open_database(postgres_url, pool_size=1)
    try:

        def read_on_a_killed_connection() -> None:
            with database.reading() as conn:
                backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                with database.engine.connect() as other:
                    other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
                    other.commit()
                time.sleep(0.2)
                execute(conn, repo.SQL_FIND_INSTANCE, {"id": "any", "tenant": "any"})

        with pytest.raises(errors.Unavailable) as lost:
            read_on_a_killed_connection()
        cause = lost.value.__cause__
        assert isinstance(cause, sa_exc.DBAPIError)
        assert cause.connection_invalidated
        with database.reading() as conn:  # a fresh connection serves the next request
            assert execute(conn, Sql("SELECT 1"), {}).fetchone() == (1,)
    finally:
        database.dispose()
