"""Applies the schema migrations; safe when several processes start at once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.exc import InterfaceError, OperationalError

from orchestra_server.storage.database import Database, DatabaseNotReady

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in MIGRATIONS (a test keeps the two in step). A process that finds the
# database there never loads the migration machinery, which would stay in its memory for good.
SCHEMA_REVISION = "0006"
VERSION_TABLE = "alembic_version"
# Any constant works; it only has to be the same in every Orchestra process.
_MIGRATION_LOCK_KEY = 0x0C4E57A


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    """The newest revision among the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def upgrade(database: Database) -> None:
    """Brings the schema to the newest revision (no-op when it is there already)."""
    if current_revision(database) == SCHEMA_REVISION:
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = _config()
    head = head_revision()
    with database.engine.connect() as conn:
        if database.is_postgres:
            # Serialise concurrent start-ups of several processes or hosts.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
        try:
            if MigrationContext.configure(conn).get_current_revision() != head:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
        finally:
            if database.is_postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()


def current_revision(database: Database) -> str | None:
    """The revision the database is at; None before the first migration."""
    with database.engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return revisions[0] if len(revisions) == 1 else None


def require_current(database: Database) -> None:
    """DatabaseNotReady unless the schema is this version's (for commands that must not migrate)."""
    try:
        revision = current_revision(database)
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseNotReady("cannot reach the database") from exc
    if revision is None:
        raise DatabaseNotReady(
            "the database has no schema yet; run `orchestra db upgrade` or start the server"
        )
    if revision != SCHEMA_REVISION:
        raise DatabaseNotReady(
            f"the database schema is at revision {revision}, this version uses {SCHEMA_REVISION}; "
            "run `orchestra db upgrade`"
        )
