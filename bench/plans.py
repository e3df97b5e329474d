"""The query plans of the operations API's searches, from the statements the repository runs.

``make bench`` records them on its grown tenant (``runs.<db>.plans`` in the results); on its
own, ``python -m bench.plans --instances 100000`` seeds a fresh SQLite file and PostgreSQL
database (as ``bench.seed`` does) and prints the plans as Markdown. PostgreSQL's plans are
``EXPLAIN ANALYZE``: they show the rows each step really read, so a scan that grows with the
tenant is visible even when the planner's estimate is small.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestra_server.service.operations import InstanceFilter, _stored_query
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import open_database
from orchestra_server.storage.statements import Sql, bind_time, is_sqlite

# The service asks for one row more than a page to know whether another page follows.
LIMIT = 101


def _search(query: repo.InstanceQuery) -> Sql:
    # The statement repository.search_instances runs for a first page of this query.
    return repo._search_sql(
        query.definition_id is not None,
        query.version is not None,
        query.status is not None,
        query.has_incident,
        query.node_id is not None,
        query.started_after is not None,
        query.started_before is not None,
        len(query.variables),
        False,
        False,
    )


def statements(key: str, value: Any) -> dict[str, tuple[Sql, dict[str, Any]]]:
    """The three searches as the service runs them: by a variable's value, has_incident, and
    the incidents oldest first (a first page each), with their parameters but the tenant."""
    by_variable = _stored_query(InstanceFilter.parse(variable=[f"{key}={json.dumps(value)}"]))
    with_incident = _stored_query(InstanceFilter.parse(has_incident=True))
    parameters = {f"name{n}": name for n, (name, _) in enumerate(by_variable.variables)}
    parameters |= {f"digest{n}": digest for n, (_, digest) in enumerate(by_variable.variables)}
    return {
        "SearchInstances variable=": (_search(by_variable), parameters),
        "SearchInstances has_incident=true": (_search(with_incident), {}),
        "ListIncidents (oldest first)": (repo._incidents_sql(False, False, False), {}),
    }


def explain(url: str, tenant: str, key: str = "reference") -> dict[str, Any]:
    """Each search's statement and plan on the database at `url`, for one of the tenant's keys."""
    db = open_database(url, pool_size=1)
    try:
        with db.engine.connect() as conn:
            found = conn.execute(
                select(repo.variables_t.c.value)
                .join(repo.instances_t, repo.instances_t.c.seq == repo.variables_t.c.instance_seq)
                .where(repo.instances_t.c.tenant_id == tenant, repo.variables_t.c.name == key)
                .limit(1)
            ).first()
            if found is None:
                raise RuntimeError(f"no instance of {tenant} has the variable {key}")
            out: dict[str, Any] = {"database": "sqlite" if is_sqlite(conn) else "postgres", "plans": {}}
            for name, (sql, parameters) in statements(key, json.loads(found[0])).items():
                values = {"tenant": tenant, "limit": LIMIT, **parameters}
                values = {k: bind_time(conn, v) if isinstance(v, datetime) else v for k, v in values.items()}
                if is_sqlite(conn):
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql.sqlite, values).all()
                    plan = [_sqlite_line(rows, row) for row in rows]
                    text = sql.sqlite
                else:
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    cursor.execute("EXPLAIN ANALYZE " + sql.postgres, values)
                    plan = [row[0] for row in cursor.fetchall()]
                    cursor.close()
                    text = sql.postgres
                out["plans"][name] = {"sql": text, "plan": plan}
            conn.rollback()
        return out
    finally:
        db.dispose()


def _sqlite_line(rows: list[Any], row: Any) -> str:
    # EXPLAIN QUERY PLAN rows are (id, parent, notused, detail): indent each under its parent.
    parents = {r[0]: r[1] for r in rows}
    depth = 0
    parent = row[1]
    while parent in parents:
        depth += 1
        parent = parents[parent]
    return "  " * depth + str(row[3])


def markdown(explained: dict[str, Any]) -> str:
    """The plans as Markdown: each statement, then its plan."""
    out: list[str] = []
    for name, entry in explained["plans"].items():
        out.append(f"**{name}** ({explained['database']})\n")
        out.append("```sql\n" + entry["sql"] + "\n```\n")
        out.append("```\n" + "\n".join(entry["plan"]) + "\n```\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from bench.seed import seed_instances
    from bench.stack import PostgresDatabase, Stack

    parser = argparse.ArgumentParser(prog="python -m bench.plans", description=__doc__)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args(argv)
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    with tempfile.TemporaryDirectory(prefix="orchestra-plans-") as root:
        for db in dbs:
            pg = PostgresDatabase() if db == "postgres" else None
            try:
                stack = Stack(Path(root) / db, db, 1, db_url=pg.url if pg else None)
                stack.prepare(tenants=("big",))
                url = stack.db_url or stack.settings.database_url
                seed_instances(url, "big", args.instances, keyed="reference", incident_every=100)
                print(f"### {db}, {args.instances:,} instances\n")
                print(markdown(explain(url, "big")))
            finally:
                if pg is not None:
                    pg.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
