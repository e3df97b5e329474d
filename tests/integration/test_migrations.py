"""The migrations build exactly the schema the mappings describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from orchestra_server.storage.database import Database
from orchestra_server.storage.migrate import current_revision, upgrade
from orchestra_server.storage.schema import Base


def test_schema_matches_mappings(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_seeds_defaults(database: Database) -> None:
    before = current_revision(database)
    upgrade(database)
    assert current_revision(database) == before is not None
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM tenants")).scalars().all() == ["default"]
        permissions = conn.execute(text("SELECT role, permission FROM role_permissions")).all()
    assert [tuple(p) for p in permissions] == [("api_consumer", "access orchestra api")]
