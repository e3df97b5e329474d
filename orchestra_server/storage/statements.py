"""The statements of every request, run on the database driver's own cursor.

SQLAlchemy's execution layer (execution context, bind and result processors, events, result
metadata) cost more per statement than SQLite's own work for these small statements, and
they are simple enough to keep as SQL: written once with `:name` parameters, rendered for
each driver's parameter style, run inside the transaction the caller's session holds (a
`Connection`, or on the hot path a `database.DriverSession` with no Connection at all).
Driver errors come out wrapped in SQLAlchemy's own exception types, and a lost PostgreSQL
connection is invalidated. Unlike SQLAlchemy's own execution, only that one connection is
discarded (the rest of the pool is checked by the idle ping instead), and these statements
reach neither `echo` logging nor `handle_error` events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection

from orchestra_server.storage.schema import stored_to_utc, to_utc

_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class Sql:
    """One statement in both parameter styles: `:name` (SQLite) and `%(name)s` (PostgreSQL)."""

    __slots__ = ("postgres", "sqlite")

    def __init__(self, statement: str) -> None:
        if "%" in statement:
            raise ValueError("a literal % would need escaping for the PostgreSQL driver")
        self.sqlite = statement
        self.postgres = _PARAMETER.sub(r"%(\1)s", statement)


class Session(Protocol):
    """What these statements use of a connection: its dialect, the pooled driver connection and
    a way to discard it. SQLAlchemy's `Connection` is one; `database.DriverSession`, which skips
    SQLAlchemy's per-connection work, is the other."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def connection(self) -> PoolProxiedConnection: ...

    def invalidate(self, exception: BaseException | None = None) -> None: ...


def is_sqlite(conn: Session) -> bool:
    return conn.dialect.name == "sqlite"


def execute(conn: Session, sql: Sql, parameters: Mapping[str, Any]) -> Any:
    """Runs one statement; returns the driver's cursor, positioned on its result rows."""
    return _run(conn, sql, "execute", parameters)


def execute_many(conn: Session, sql: Sql, rows: Sequence[Mapping[str, Any]]) -> None:
    """Runs one statement once for each set of parameters."""
    _run(conn, sql, "executemany", rows).close()


def _run(conn: Session, sql: Sql, method: str, parameters: Any) -> Any:
    sqlite = is_sqlite(conn)
    statement = sql.sqlite if sqlite else sql.postgres
    driver = conn.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        getattr(cursor, method)(statement, parameters)
    except conn.dialect.loaded_dbapi.Error as exc:
        cursor.close()
        _reraise(conn, exc, statement, driver, sqlite)
    return cursor


def _reraise(conn: Session, exc: Exception, statement: str, driver: Any, sqlite: bool) -> None:
    disconnect = not sqlite and conn.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
    if disconnect:
        conn.invalidate(exc)
    raise sa_exc.DBAPIError.instance(
        statement, None, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=disconnect
    ) from exc


def bind_time(conn: Session, value: datetime | None) -> Any:
    """An aware datetime as the column type stores it: naive UTC text on SQLite (the format
    SQLAlchemy writes, so that text order is time order), the aware value on PostgreSQL."""
    if value is None:
        return None
    value = to_utc(value)
    if is_sqlite(conn):
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


def read_time(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime (list answers read two or three per row)."""
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite keeps naive UTC text; naming the zone in the parse costs a tenth of parsing
        # and then replacing the zone. Text that carries its own offset takes the long way.
        try:
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return stored_to_utc(value)
