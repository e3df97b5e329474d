"""Connections to the embedded SQLite database or to PostgreSQL, and the transactions around them."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import InterfaceError as DbInterfaceError

from orchestra_server.errors import Overloaded, Unavailable

SQLITE_FILE = "orchestra.db"
# How long a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite durability levels (PRAGMA synchronous) Orchestra accepts; Settings picks one.
SQLITE_SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")
# NORMAL in WAL mode never loses a committed transaction when the process is killed;
# FULL also survives power loss, at a cost per commit.
DEFAULT_SQLITE_SYNCHRONOUS = "NORMAL"

_WRITE = "orchestra_write"
# A pooled PostgreSQL connection idle at least this long is checked before it is used again.
POSTGRES_PING_AFTER_IDLE = 5.0
_RETURNED_AT = "orchestra_returned_at"
# Beside the database file: the lock all processes' writers queue on.
SQLITE_WRITER_LOCK_SUFFIX = "-writer.lock"


class DatabaseNotReady(Exception):
    """There is no database yet, or its schema is not the one this version uses."""


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / SQLITE_FILE}"


def normalise_url(url: str) -> str:
    """Accepts postgresql:// and postgres:// URLs and routes them to psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class WriterQueue:
    """Makes SQLite writers wait their turn without sleeping in SQLite's busy handler.

    SQLite allows one writer at a time, and a writer that finds the lock taken polls for it
    in sleeps of up to 100 ms, so under load every write waits far longer than the writes
    ahead of it take. Writers instead queue here: the threads of a process on a lock, the
    processes sharing the database on a lock file, whose waiter the kernel wakes at once.
    SQLite's own busy timeout stays as the safety net for writers outside Orchestra.
    """

    def __init__(self, lock_file: Path | None, timeout_seconds: float) -> None:
        self._threads = threading.Lock()
        self._timeout = timeout_seconds
        self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600) if lock_file is not None else None

    @contextmanager
    def turn(self) -> Iterator[None]:
        if not self._threads.acquire(timeout=self._timeout):
            raise Overloaded("the database is busy; retry later")
        try:
            if self._fd is None:
                yield
                return
            # Only the thread holding its process's turn waits here, and only for the write
            # transaction another process is running; the kernel releases the lock of a
            # process that dies. (A process stopped mid-write would hold this thread until
            # it resumes, as it would hold SQLite's own lock; the others time out above.)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Database:
    """One engine (a connection pool) and the two kinds of transaction the services use."""

    engine: Engine
    # SQLite only: where writers wait for their turn.
    writers: WriterQueue | None = field(default=None)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with _translate_outage(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction that commits when the block ends and rolls back on any error.

        On SQLite it takes the write lock at once (BEGIN IMMEDIATE), so a read
        followed by a write inside it can never interleave with another writer.
        On PostgreSQL callers lock the rows they change (SELECT ... FOR UPDATE).
        """
        turn = self.writers.turn() if self.writers is not None else nullcontext()
        with turn, _translate_outage(), self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        if self.writers is not None:
            self.writers.close()


@contextmanager
def _translate_outage() -> Iterator[None]:
    try:
        yield
    except (OperationalError, DbInterfaceError) as exc:
        if exc.connection_invalidated or _is_connect_failure(exc):
            raise Unavailable("database unavailable") from exc
        raise


def _is_connect_failure(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("connection refused", "could not connect", "server closed", "terminating"))


def open_database(
    url: str,
    *,
    pool_size: int = 8,
    echo: bool = False,
    ping_after_idle: float = POSTGRES_PING_AFTER_IDLE,
    sqlite_synchronous: str = DEFAULT_SQLITE_SYNCHRONOUS,
    must_exist: bool = False,
) -> Database:
    """A pool on the database at `url`; with `must_exist` a missing SQLite file is DatabaseNotReady
    rather than a new empty database."""
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS_LEVELS:
        raise ValueError(f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS_LEVELS)}")
    url = normalise_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        lock_file = None
        if parsed.database and parsed.database != ":memory:":
            if must_exist and not Path(parsed.database).is_file():
                raise DatabaseNotReady(f"no database at {parsed.database}")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            lock_file = Path(parsed.database + SQLITE_WRITER_LOCK_SUFFIX)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, sqlite_synchronous)
        return Database(engine, WriterQueue(lock_file, SQLITE_BUSY_TIMEOUT_MS / 1000))
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        engine = create_engine(url, **kwargs)
        _check_idle_connections(engine, ping_after_idle)
    return Database(engine)


def _check_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Checks a pooled PostgreSQL connection before use only when it has been idle a while.

    Checking every connection on every checkout costs a round trip per request (about a
    third of a getInstance); a connection used moments ago is almost always still there. One
    that died while in use is discarded by the failing statement (its request answers 503),
    and one that sat idle, through a database restart say, is checked and replaced unseen.
    """

    @event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: the pool replaces the connection and retries
            raise DisconnectionError("an idle connection was lost") from exc


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event decide how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # Straight on the driver's connection: this runs at the start of every transaction.
        driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.execute("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
