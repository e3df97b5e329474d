"""The operations API's searches use their indexes on both databases, so they stay flat as a
tenant grows (make bench measures it; docs/benchmarks.md shows the plans on a full table)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text

from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.statements import Sql, bind_time, is_sqlite

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _search(**shape: Any) -> Sql:
    filters = {
        "by_definition": False,
        "by_version": False,
        "by_status": False,
        "has_incident": None,
        "by_node": False,
        "after": False,
        "before": False,
        "variables": 0,
        "position": False,
        "only": False,
    }
    filters.update(shape)
    return repo._search_sql(*filters.values())


# Each statement with the index it must use (the first table it reads).
CASES: dict[str, tuple[Sql, dict[str, Any], str]] = {
    "newest first, next page": (_search(position=True), {"before_seq": 5}, "ix_instances_tenant_seq"),
    # Driven by the tenant's own matches of the value, newest first: other tenants' matches and
    # the tenant's older ones are never read.
    "variable equals": (
        _search(variables=1),
        {"name0": "customer", "digest0": "0" * 64},
        "ix_variables_tenant_name_digest_seq",
    ),
    "two variables, next page": (
        _search(variables=2, position=True),
        {"name0": "customer", "digest0": "0" * 64, "name1": "region", "digest1": "1" * 64, "before_seq": 5},
        "ix_variables_tenant_name_digest_seq",
    ),
    # Either incident index leads with the tenant and holds only incident tokens (PostgreSQL
    # takes either).
    "has an incident": (_search(has_incident=True), {}, "ix_tokens_incidents_"),
    # On empty tables PostgreSQL may take any tokens index that leads with the tenant; SQLite's
    # choice is the node index (bench/plans.py shows PostgreSQL's on a grown tenant).
    "a live token at a node": (_search(by_node=True), {"node_id": "approve"}, "ix_tokens_tenant_"),
    "started in a range": (
        _search(after=True, before=True),
        {"started_after": NOW, "started_before": NOW},
        "ix_instances_tenant_",
    ),
    "incidents, next page": (
        repo._incidents_sql(False, False, True),
        {"since": NOW, "token": "t"},
        "ix_tokens_incidents_since",
    ),
    "history, next page": (repo.SQL_HISTORY_AFTER, {"id": "i", "after": 1}, "ix_audit_tenant_instance_seq"),
}


def _plan(conn: Connection, sql: Sql, parameters: dict[str, Any]) -> str:
    values = {"tenant": "acme", "limit": 10, **parameters}
    values = {k: bind_time(conn, v) if isinstance(v, datetime) else v for k, v in values.items()}
    if is_sqlite(conn):
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql.sqlite, values).all()
        return "\n".join(str(row[-1]) for row in rows)
    # On empty tables any plan is cheap; forbid sequential scans to see the index is usable.
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("EXPLAIN " + sql.postgres, values)
    plan = "\n".join(row[0] for row in cursor.fetchall())
    cursor.close()
    return plan


@pytest.mark.parametrize("case", list(CASES))
def test_each_search_reads_through_its_index(database: Database, case: str) -> None:
    sql, parameters, index = CASES[case]
    with database.engine.connect() as conn:
        plan = _plan(conn, sql, parameters)
    assert index in plan, plan
    if case == "a live token at a node" and database.engine.dialect.name == "sqlite":
        assert "ix_tokens_tenant_node_status" in plan, plan
    for full_scan in ("SCAN i ", "SCAN t ", "SCAN v0 ", "Seq Scan"):
        assert full_scan not in plan, plan
    if case in ORDERED_BY_INDEX and database.engine.dialect.name == "sqlite":
        # Rows come in page order from the index, so the LIMIT stops the walk (no sort of all).
        assert "TEMP B-TREE" not in plan, plan


ORDERED_BY_INDEX = (
    "newest first, next page",
    "variable equals",
    "two variables, next page",
    "has an incident",
)


def test_the_scheduler_finds_due_tokens_through_the_partial_due_index(database: Database) -> None:
    """The claim's bound on `due_at` implies the index's `due_at IS NOT NULL`, so the partial
    index serves the claim on both databases: among many waiting tokens without a due time
    (none of them in that index), the few timers are found without reading the others."""
    with database.engine.connect() as conn, conn.begin() as transaction:
        conn.execute(
            text(
                "INSERT INTO definitions"
                " (tenant_key, definition_id, version, content, content_hash, deployed_at)"
                " VALUES ('', 'plans', 1, '{}', 'h', :at)"
            ),
            {"at": bind_time(conn, NOW)},
        )
        pk = conn.execute(text("SELECT pk FROM definitions WHERE definition_id = 'plans'")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO instances"
                " (id, tenant_id, definition_id, definition_pk, status, created_at, updated_at)"
                " VALUES ('plans-i', 'acme', 'plans', :pk, 'running', :at, :at)"
            ),
            {"pk": pk, "at": bind_time(conn, NOW)},
        )
        seq = conn.execute(text("SELECT seq FROM instances WHERE id = 'plans-i'")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO tokens (id, instance_seq, tenant_id, node_id, status, ordinal, due_at)"
                " VALUES (:id, :seq, 'acme', :node, 'parked', 0, :due)"
            ),
            [
                {
                    "id": f"t{n}",
                    "seq": seq,
                    "node": f"n{n % 7}",
                    "due": bind_time(conn, NOW) if n % 500 == 0 else None,
                }
                for n in range(3000)
            ],
        )
        conn.execute(text("ANALYZE"))
        sql = repo.SQL_CLAIM_DUE_SQLITE if is_sqlite(conn) else repo.SQL_CLAIM_DUE_POSTGRES
        plan = _plan(conn, sql, {"now": NOW, "lease_until": NOW})
        transaction.rollback()
    assert re.search(r"\bix_tokens_due\b", plan), plan
    for full_scan in ("SCAN tokens", "Seq Scan"):
        assert full_scan not in plan, plan
