"""The migrations build exactly the schema the mappings describe, on both databases."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from orchestra_server.engine.model import IncidentKind, Retry
from orchestra_server.storage.database import Database
from orchestra_server.storage.migrate import (
    MIGRATIONS,
    SCHEMA_REVISION,
    current_revision,
    head_revision,
    upgrade,
)
from orchestra_server.storage.repository import live_tokens, value_digest
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


# The text every step-limit incident carried before incidents had a kind.
OLD_STEP_LIMIT_TEXT = "step limit reached: too many automatic moves in one step (a cycle without a wait?)"


def _insert_definition(conn: Connection, at: datetime) -> None:
    """One shared definition `d`, version 1 (pk 1), as every revision stores it."""
    conn.execute(
        text(
            "INSERT INTO definitions"
            " (tenant_key, definition_id, version, content, content_hash, deployed_at)"
            " VALUES ('', 'd', 1, '{}', 'h', :at)"
        ),
        {"at": at},
    )


def _insert_instance(
    conn: Connection, at: datetime, seq: int = 1, *, tenant: str = "default", status: str = "running"
) -> None:
    """Instance `i<seq>` of the shared definition `d`, as every revision stores it."""
    conn.execute(
        text(
            "INSERT INTO instances"
            " (seq, id, tenant_id, definition_id, definition_pk, status, created_at, updated_at)"
            " VALUES (:seq, :id, :tenant, 'd', 1, :status, :at, :at)"
        ),
        {"seq": seq, "id": f"i{seq}", "tenant": tenant, "status": status, "at": at},
    )


def _one_instance_at(database: Database, revision: str) -> datetime:
    """Migrates down to `revision` and stores instance `i1` of definition `d` there."""
    _migrate(database, revision, down=True)
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    with database.engine.begin() as conn:
        _insert_definition(conn, at)
        _insert_instance(conn, at)
    return at


def _migrate(database: Database, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.connect() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
        conn.commit()


def test_incidents_stored_before_kinds_get_one(database: Database) -> None:
    """0002 classifies existing incidents: the old step-limit text, anything else unclassified."""
    at = _one_instance_at(database, "0001")
    with database.engine.begin() as conn:
        for token_id, status, message in [
            ("t-step", "incident", OLD_STEP_LIMIT_TEXT),
            ("t-other", "incident", "'x > 1' failed: no such key"),
            ("t-parked", "parked", None),
        ]:
            conn.execute(
                text(
                    "INSERT INTO tokens (id, instance_seq, tenant_id, node_id, status, ordinal, message)"
                    " VALUES (:id, 1, 'default', 'n', :status, 1, :message)"
                ),
                {"id": token_id, "status": status, "message": message},
            )
    _migrate(database, "head")
    assert current_revision(database) == SCHEMA_REVISION
    with database.engine.connect() as conn:
        tokens = {token.id: token for token in live_tokens(conn, 1)}
    assert (tokens["t-step"].incident, tokens["t-step"].retry) == (IncidentKind.STEP_LIMIT, Retry.ARRIVE)
    assert (tokens["t-other"].incident, tokens["t-other"].retry) == (IncidentKind.UNCLASSIFIED, None)
    assert tokens["t-other"].reason == "'x > 1' failed: no such key"
    assert (tokens["t-parked"].incident, tokens["t-parked"].reason) == (None, None)
    assert {token.since for token in tokens.values()} == {at}


def test_operations_columns_are_filled_for_what_was_stored_before(database: Database) -> None:
    """0003: an ended instance ends when it last changed; every stored value gets its digest."""
    _migrate(database, "0002", down=True)
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    with database.engine.begin() as conn:
        _insert_definition(conn, at)
        for seq, status in ((1, "running"), (2, "completed")):
            _insert_instance(conn, at, seq, status=status)
        conn.execute(
            text("INSERT INTO variables (instance_seq, name, value) VALUES (1, 'a', :v), (2, 'a', :w)"),
            {"v": '{"x":1.0,"y":[true]}', "w": '{"y":[true],"x":1}'},
        )
    _migrate(database, "head")
    with database.engine.connect() as conn:
        ended = dict(conn.execute(text("SELECT id, ended_at FROM instances ORDER BY seq")).all())
        digests = (
            conn.execute(text("SELECT value_digest FROM variables ORDER BY instance_seq")).scalars().all()
        )
    assert ended["i1"] is None
    assert ended["i2"] is not None
    assert digests[0] == digests[1] == value_digest('{"x":1,"y":[true]}')


def test_tenants_stored_before_rate_limits_keep_the_default_and_a_downgrade_drops_them(
    database: Database,
) -> None:
    """0004: a tenant from before has no limit of its own (NULL: the edge's default applies)."""
    from orchestra_server.storage.tenancy import list_tenants, tenant_rate_limits

    _migrate(database, "0003", down=True)
    with database.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, label, created_at) VALUES ('acme', NULL, :at)"),
            {"at": datetime(2026, 3, 1, tzinfo=UTC)},
        )
    _migrate(database, "head")
    with database.engine.begin() as conn:
        assert {t.id: t.rate_limit for t in list_tenants(conn)} == {"acme": None, "default": None}
        assert tenant_rate_limits(conn) == {}
        conn.execute(text("UPDATE tenants SET rate_limit_rps = 5, rate_limit_burst = 10 WHERE id = 'acme'"))
    _migrate(database, "0003", down=True)
    with database.engine.connect() as conn:
        columns = conn.execute(text("SELECT * FROM tenants WHERE id = 'acme'")).mappings().one()
    assert "rate_limit_rps" not in columns
    _migrate(database, "head")


def test_variables_stored_before_take_their_instance_tenant(database: Database) -> None:
    """0005: each stored variable gets its instance's tenant; a downgrade drops the column."""
    _migrate(database, "0004", down=True)
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    with database.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, label, created_at) VALUES ('acme', NULL, :at)"), {"at": at}
        )
        _insert_definition(conn, at)
        for seq, tenant in ((1, "default"), (2, "acme")):
            _insert_instance(conn, at, seq, tenant=tenant)
        conn.execute(
            text(
                "INSERT INTO variables (instance_seq, name, value, value_digest)"
                " VALUES (1, 'a', '1', 'x'), (1, 'b', '2', 'y'), (2, 'a', '1', 'x')"
            )
        )
    _migrate(database, "head")
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT instance_seq, name, tenant_id FROM variables ORDER BY 1, 2")).all()
    assert [tuple(r) for r in rows] == [(1, "a", "default"), (1, "b", "default"), (2, "a", "acme")]
    _migrate(database, "0004", down=True)
    with database.engine.connect() as conn:
        columns = conn.execute(text("SELECT * FROM variables WHERE instance_seq = 2")).mappings().one()
    assert "tenant_id" not in columns
    _migrate(database, "head")


def _token_indexes(conn: Connection) -> dict[str, bool]:
    """The tokens table's indexes by name, each with whether it is partial."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT name, partial FROM pragma_index_list('tokens')")).all()
        return {name: bool(partial) for name, partial in rows if not name.startswith("sqlite_")}
    rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tokens'")).all()
    return {name: " WHERE " in definition for name, definition in rows if name != "pk_tokens"}


def test_tokens_incident_and_due_indexes_hold_only_their_rows_from_0006(database: Database) -> None:
    """0006 makes the incident and due-time indexes partial; what they find is unchanged."""
    at = _one_instance_at(database, "0005")
    with database.engine.begin() as conn:
        for token, status, due in (
            ("t-parked", "parked", None),
            ("t-timer", "parked", at),
            ("t-inc", "incident", None),
        ):
            conn.execute(
                text(
                    "INSERT INTO tokens"
                    " (id, instance_seq, tenant_id, node_id, status, ordinal, due_at, since)"
                    " VALUES (:id, 1, 'default', 'n', :status, 0, :due, :at)"
                ),
                {"id": token, "status": status, "due": due, "at": at},
            )
        assert _token_indexes(conn) == {
            "ix_tokens_instance_seq": False,
            "ix_tokens_due_at": False,
            "ix_tokens_tenant_status_since": False,
            "ix_tokens_tenant_status_instance": False,
            "ix_tokens_tenant_node_status": False,
        }
    _migrate(database, "head")
    with database.engine.connect() as conn:
        assert _token_indexes(conn) == {
            "ix_tokens_instance_seq": False,
            "ix_tokens_due": True,
            "ix_tokens_incidents_since": True,
            "ix_tokens_incidents_instance": True,
            "ix_tokens_tenant_node_status": False,
        }
        incidents = conn.execute(
            text(
                "SELECT id FROM tokens WHERE tenant_id = 'default' AND status = 'incident' ORDER BY since, id"
            )
        ).scalars()
        assert list(incidents) == ["t-inc"]
        due = conn.execute(
            text("SELECT id FROM tokens WHERE due_at <= :now ORDER BY due_at"), {"now": at}
        ).scalars()
        assert list(due) == ["t-timer"]
    _migrate(database, "0005", down=True)
    with database.engine.connect() as conn:
        assert set(_token_indexes(conn)) == {
            "ix_tokens_instance_seq",
            "ix_tokens_due_at",
            "ix_tokens_tenant_status_since",
            "ix_tokens_tenant_status_instance",
            "ix_tokens_tenant_node_status",
        }
    _migrate(database, "head")
