"""Connections to the embedded SQLite database or to PostgreSQL, and the transactions around them."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import InterfaceError as DbInterfaceError
from sqlalchemy.pool import PoolProxiedConnection

from orchestra_server.errors import Overloaded, Unavailable

SQLITE_FILE = "orchestra.db"
# How long a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite durability levels (PRAGMA synchronous) Orchestra accepts; Settings picks one.
SQLITE_SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")
# NORMAL in WAL mode never loses a committed transaction when the process is killed;
# FULL also survives power loss, at a cost per commit.
DEFAULT_SQLITE_SYNCHRONOUS = "NORMAL"

# SQLite copies committed pages from its write-ahead log into the database file (a checkpoint,
# with the file's fsync) in the commit that finds this many pages in the log: without a
# checkpointer in the background (`LogCheckpointer`), that commit's writer, and every writer
# queued behind its turn, waits for it. A serving process checkpoints in the background, long
# before the log is this large; this is what still bounds the log when none runs.
SQLITE_COMMIT_CHECKPOINT_PAGES = 10_000
# How often a serving process checkpoints SQLite's log in the background.
SQLITE_CHECKPOINT_INTERVAL_SECONDS = 0.1
# The log starts over from its beginning only after a checkpoint that no commit overtook; under a
# steady stream of writes the background checkpoints seldom are, so once the log holds this many
# pages the few appended during the last one are copied in the writers' turn.
SQLITE_LOG_RESTART_PAGES = 2_000

_WRITE = "orchestra_write"
_log = logging.getLogger("orchestra.storage")
# A pooled PostgreSQL connection idle at least this long is checked before it is used again.
POSTGRES_PING_AFTER_IDLE = 5.0
_RETURNED_AT = "orchestra_returned_at"
# Beside the database file: the lock all processes' writers queue on.
SQLITE_WRITER_LOCK_SUFFIX = "-writer.lock"
# SQLite's primary result codes that mean the storage under the database refuses the write (a
# read-only or immutable file, an I/O error, a full disk): the database is unavailable, not broken.
_SQLITE_STORAGE_FAULTS = frozenset({3, 8, 10, 13, 14})  # PERM, READONLY, IOERR, FULL, CANTOPEN
# The write the health check makes while writes are failing, to see when they work again: it
# changes no value but is a real write (SQLite appends the page to its log, PostgreSQL a row version).
_WRITE_PROBE = "UPDATE alembic_version SET version_num = version_num"
# Marks a pooled connection opened and not yet handed out.
_OPENED_FOR_CHECKOUT = "orchestra_opened_for_checkout"
# What lost or refused PostgreSQL connections say; a refused one carries no SQLSTATE (psycopg
# says only "connection failed: ...").
_CONNECT_FAILURES = (
    "connection failed",
    "connection refused",
    "could not connect",
    "server closed",
    "terminating",
)


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


class LogCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a thread of its own.

    Left to SQLite, the commit that finds the log past its limit copies the log into the
    database file and syncs it: a few milliseconds in which that writer holds the writer's turn
    and everyone behind it waits (at one call at a time, 2% of starts took 5-9 ms instead of
    1.6). Here a passive checkpoint runs every `interval` on a connection of its own: it
    waits for no reader or writer and none waits for it, and a commit only appends to the log.
    Every process serving the database runs one; when two meet, one finds the other at work and
    leaves it the pages. Failures (the storage refusing writes, say) are logged and the
    connection is opened afresh for the next round.

    Commits go on appending while a checkpoint copies, so the log seldom comes to an end the
    next writer could start it over from; past SQLITE_LOG_RESTART_PAGES, the pages left are
    copied in the writers' turn (a few, the rest being copied already), and the log starts over.
    """

    def __init__(
        self,
        path: str,
        writers: WriterQueue | None,
        interval: float = SQLITE_CHECKPOINT_INTERVAL_SECONDS,
        restart_pages: int = SQLITE_LOG_RESTART_PAGES,
    ) -> None:
        self._path = path
        self._writers = writers
        self._interval = interval
        self._restart_pages = restart_pages
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self.rounds = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="orchestra-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._close()

    def checkpoint(self) -> tuple[int, int]:
        """One passive checkpoint: (pages in the log, pages of it now in the database file)."""
        if self._connection is None:
            # The database exists already (a serving process migrated it): never create one.
            uri = "file:" + Path(self._path).absolute().as_posix() + "?mode=rw"
            self._connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        _busy, in_log, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(in_log), int(copied)

    def checkpoint_round(self) -> None:
        """A passive checkpoint; one more in the writers' turn when the log has grown long."""
        in_log, _copied = self.checkpoint()
        if in_log >= self._restart_pages and self._writers is not None:
            with self._writers.turn():
                self.checkpoint()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint_round()
                failing = False
            except (sqlite3.Error, Overloaded) as exc:
                if not failing:
                    _log.warning("checkpointing the database log failed: %s", exc)
                failing = True
                self._close()
            self.rounds += 1

    def _close(self) -> None:
        if self._connection is not None:
            with suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None


class StorageFaults:
    """Whether the database is refusing writes, and which pooled connections to discard.

    A connection that saw the storage fail is not trusted afterwards: SQLite opens a database it
    cannot write read-only and keeps it so, and a PostgreSQL connection through an outage may be
    half-closed. So every connection opened before the latest fault, or before the probe that
    found writes working again, is closed at its next checkout and a fresh one opened instead.
    Only a write that changed the file ends the fault: a write transaction that changes nothing
    commits even on a read-only file.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Wall-clock time, as the pool records when it opened each connection.
        self._discard_before = 0.0
        self.failing = False

    def fault(self) -> None:
        with self._lock:
            self.failing = True
            self._discard_before = time.time()

    def recovered(self) -> None:
        with self._lock:
            self.failing = False
            self._discard_before = time.time()

    def stale(self, opened_at: float) -> bool:
        return opened_at <= self._discard_before


@dataclass
class Database:
    """One engine (a connection pool) and the two kinds of transaction the services use."""

    engine: Engine
    # SQLite only: where writers wait for their turn.
    writers: WriterQueue | None = field(default=None)
    faults: StorageFaults = field(default_factory=StorageFaults)

    def __post_init__(self) -> None:
        _discard_stale_connections(self.engine, self.faults)
        self._reader: tuple[Engine, Engine] | None = None

    def _reading_engine(self) -> Engine:
        # PostgreSQL reads run without BEGIN and COMMIT, two round trips fewer per read: at READ
        # COMMITTED (the server's default, never changed here) every statement takes its own
        # snapshot inside a transaction too, so a read sees exactly what it would in one.
        # The same pool; the connection's mode is set at checkout and reset at checkin. Made
        # for the engine in place now, should it have been replaced.
        if self._reader is None or self._reader[0] is not self.engine:
            engine = self.engine
            reader = engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else engine
            self._reader = (engine, reader)
        return self._reader[1]

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only (on PostgreSQL each statement commits by itself, so a
        write here would not be undone with the block: write in `writing`)."""
        with _translate_outage(self.faults), self._reading_engine().connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction that commits when the block ends and rolls back on any error.

        On SQLite it takes the write lock at once (BEGIN IMMEDIATE), so a read
        followed by a write inside it can never interleave with another writer.
        On PostgreSQL callers lock the rows they change (SELECT ... FOR UPDATE).
        """
        with self._writer_turn(), _translate_outage(self.faults), self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def driver_reading(self) -> Iterator[DriverSession]:
        """A read of one statement (storage.statements) on the pooled driver connection itself.

        None of SQLAlchemy's per-connection work (a Connection, its transaction, events) and no
        transaction at all: the one statement reads one snapshot by itself, on SQLite as on
        PostgreSQL. A read of several statements that must agree belongs in `reading`.
        """
        with _translate_outage(self.faults), _wrapped_driver_errors(self.engine.dialect):
            pooled = self.engine.raw_connection()
            driver: Any = pooled.dbapi_connection
            postgres = self.is_postgres
            try:
                if postgres:
                    # As `reading` does it: no BEGIN and no ROLLBACK round trips around the read.
                    driver.autocommit = True
                yield DriverSession(self.engine.dialect, pooled)
            finally:
                try:
                    if postgres and pooled.is_valid:
                        driver.autocommit = False
                finally:
                    pooled.close()

    @contextmanager
    def driver_writing(self) -> Iterator[DriverSession]:
        """`writing` for statements of storage.statements only, on the pooled driver connection:
        the same transaction (BEGIN IMMEDIATE after the writer's turn on SQLite; on PostgreSQL the
        driver's own transaction, rows locked by the statements), committed when the block ends
        and rolled back on any error, without SQLAlchemy's per-connection work.
        """
        with self._writer_turn(), _translate_outage(self.faults), _wrapped_driver_errors(self.engine.dialect):
            pooled = self.engine.raw_connection()
            driver: Any = pooled.dbapi_connection
            try:
                if not self.is_postgres:
                    driver.execute("BEGIN IMMEDIATE")
                yield DriverSession(self.engine.dialect, pooled)
                driver.commit()
            except BaseException:
                if pooled.is_valid:
                    # A failed rollback leaves the connection to the pool's reset or invalidation.
                    with suppress(Exception):
                        driver.rollback()
                raise
            finally:
                pooled.close()

    def _writer_turn(self) -> AbstractContextManager[None]:
        """This writer's turn among every process's writers (SQLite), or nothing to wait for."""
        return self.writers.turn() if self.writers is not None else nullcontext()

    def check_writable(self) -> None:
        """Raises Unavailable when the database cannot serve: while writes have been failing,
        by trying one; otherwise by reading."""
        if self.faults.failing:
            with self.writing() as conn:
                conn.exec_driver_sql(_WRITE_PROBE)
            self.faults.recovered()
        else:
            with self.reading() as conn:
                conn.exec_driver_sql("SELECT 1")

    def log_checkpointer(self) -> LogCheckpointer | None:
        """A background checkpointer for a SQLite database; None for PostgreSQL."""
        path = self.engine.url.database
        if self.is_postgres or not path:
            return None
        return LogCheckpointer(path, self.writers)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.writers is not None:
            self.writers.close()


class DriverSession:
    """A pooled driver connection as storage.statements use it (statements.Session)."""

    __slots__ = ("connection", "dialect")

    def __init__(self, dialect: Dialect, connection: PoolProxiedConnection) -> None:
        self.dialect = dialect
        self.connection = connection

    def invalidate(self, exception: BaseException | None = None) -> None:
        self.connection.invalidate(exception)


@contextmanager
def _wrapped_driver_errors(dialect: Dialect) -> Iterator[None]:
    """Driver errors raised outside a statement (connecting, BEGIN, COMMIT) as SQLAlchemy's
    exception types, as a Connection would raise them, so outages are told apart as for `writing`."""
    try:
        yield
    except dialect.loaded_dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc


@contextmanager
def _translate_outage(faults: StorageFaults) -> Iterator[None]:
    try:
        yield
    except (OperationalError, DbInterfaceError) as exc:
        if exc.connection_invalidated or _is_connect_failure(exc) or _is_storage_fault(exc):
            faults.fault()
            raise Unavailable("database unavailable") from exc
        raise
    except sqlite3.OperationalError as exc:
        # Unwrapped: raised by the BEGIN the begin event runs on the driver's own connection.
        if _is_storage_fault(exc):
            faults.fault()
            raise Unavailable("database unavailable") from exc
        raise


def _is_storage_fault(exc: Exception) -> bool:
    code = getattr(getattr(exc, "orig", exc), "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_STORAGE_FAULTS


def _discard_stale_connections(engine: Engine, faults: StorageFaults) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_OPENED_FOR_CHECKOUT] = True

    @event.listens_for(engine, "checkout")
    def on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A connection opened for this very checkout is taken as it is: it is the newest there can
        # be, though its opening time may precede a fault another thread reported meanwhile, and
        # the pool, refused twice, would give up with an error that is no outage.
        if record.info.pop(_OPENED_FOR_CHECKOUT, False):
            return
        if faults.stale(record.starttime):
            # The pool closes this one and opens a fresh connection in its place.
            raise DisconnectionError("opened before a storage fault")


def _is_connect_failure(exc: Exception) -> bool:
    # PostgreSQL's classes for a lost or refused connection (08), no resources left (53: too many
    # connections, disk full) and a server shutting down or starting (57P01-57P03).
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if sqlstate.startswith(("08", "53", "57P0")):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in _CONNECT_FAILURES)


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
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_COMMIT_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # Straight on the driver's connection: this runs at the start of every transaction.
        driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.execute("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
