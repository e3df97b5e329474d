"""The migrations build exactly the schema the mappings describe, on both databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from orchestra_server.storage.database import Database
from orchestra_server.storage.migrate import SCHEMA_REVISION, current_revision, head_revision, upgrade
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


def test_the_recorded_schema_revision_is_the_newest_migration(database: Database) -> None:
    assert head_revision() == SCHEMA_REVISION
    assert current_revision(database) == SCHEMA_REVISION


def test_a_process_on_a_current_database_never_loads_the_migration_machinery(
    database: Database, tmp_path: Path
) -> None:
    url = database.engine.url.render_as_string(hide_password=False)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestra_server.bootstrap import build_application\n"
        "from orchestra_server.settings import Settings\n"
        f"app = build_application(Settings(data_dir=Path({str(tmp_path)!r}), db_url={url!r}))\n"
        "app.database.dispose()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
