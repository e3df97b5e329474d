"""Bulk seeding with direct inserts into the real schema: what a start writes, many thousand times.

The rows are the ones ``ProcessService.start_process`` writes (instance,
variables, tokens, one audit row), built from the engine's own start step of
the deployed definition, so the queries under test find the same shape of data.
They are not identical to real starts: every seeded instance has the one
variable ``amount = 1``, a batch shares one creation time, the audit row's actor
is ``bench-seed`` and its detail leaves out the start step, and with
``due_in_past`` the timers are made due in the past.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select

from orchestra_server.engine import engine
from orchestra_server.service.definitions import parse_stored
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database, open_database

BATCH = 5_000


def _new_id() -> str:
    return str(uuid.uuid4())


def seed_instances(
    url: str,
    tenant: str,
    count: int,
    *,
    definition_id: str = "three_step",
    due_in_past: bool = False,
    database: Database | None = None,
) -> list[tuple[str, str]]:
    """Creates `count` running instances of the definition, each with its start step's tokens parked.

    Returns (instance id, first token id) pairs, oldest first. With `due_in_past`, every
    parked token with a due time (a timer) is made due a minute ago, oldest first.
    """
    db = database or open_database(url, pool_size=1)
    try:
        now = datetime.now(UTC)
        with db.reading() as conn:
            found = repo.definition_for_tenant(conn, tenant, definition_id)
        if found is None:
            raise RuntimeError(f"definition {definition_id} is not deployed")
        pk, content = found
        definition = parse_stored(content)
        step = engine.start(definition, {"amount": 1}, now=now, new_id=_new_id)
        template = step.created
        pairs: list[tuple[str, str]] = []
        due_base = now - timedelta(minutes=1) - timedelta(microseconds=count)
        for first in range(0, count, BATCH):
            size = min(BATCH, count - first)
            ids = [_new_id() for _ in range(size)]
            with db.writing() as conn:
                rows = conn.execute(
                    insert(repo.instances_t).returning(
                        repo.instances_t.c.id, repo.instances_t.c.seq, sort_by_parameter_order=True
                    ),
                    [
                        {
                            "id": instance_id,
                            "tenant_id": tenant,
                            "definition_id": definition_id,
                            "definition_pk": pk,
                            "status": step.status.value,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for instance_id in ids
                    ],
                ).all()
                seqs = {row.id: row.seq for row in rows}
                tokens = []
                variables = []
                audit = []
                for n, instance_id in enumerate(ids):
                    seq = seqs[instance_id]
                    made = []
                    for token in template:
                        due = token.due_at
                        if due is not None and due_in_past:
                            due = due_base + timedelta(microseconds=first + n)
                        made.append(replace(token, id=_new_id(), due_at=due))
                    pairs.append((instance_id, made[0].id if made else ""))
                    for token in made:
                        tokens.append(
                            {
                                "id": token.id,
                                "instance_seq": seq,
                                "tenant_id": tenant,
                                "node_id": token.node_id,
                                "status": token.status.value,
                                "ordinal": token.ordinal,
                                "arrived_by": token.arrived_by,
                                "due_at": token.due_at,
                                "message": None,
                            }
                        )
                    variables.append({"instance_seq": seq, "name": "amount", "value": "1"})
                    audit.append(
                        {
                            "at": now,
                            "tenant_id": tenant,
                            "actor": "bench-seed",
                            "action": "instance.start",
                            "instance_id": instance_id,
                            "detail": repo.dump_json({"definition_id": definition_id, "definition_pk": pk}),
                        }
                    )
                if tokens:
                    conn.execute(insert(repo.tokens_t), tokens)
                conn.execute(insert(repo.variables_t), variables)
                conn.execute(insert(repo.audit_t), audit)
        if db.is_postgres:
            with db.writing() as conn:
                for table in ("instances", "tokens", "variables"):
                    conn.exec_driver_sql(f"ANALYZE {table}")
        return pairs
    finally:
        if database is None:
            db.dispose()


def count_instances(url: str, tenant: str | None = None, status: str | None = None) -> int:
    db = open_database(url, pool_size=1)
    try:
        query = select(func.count()).select_from(repo.instances_t)
        if tenant is not None:
            query = query.where(repo.instances_t.c.tenant_id == tenant)
        if status is not None:
            query = query.where(repo.instances_t.c.status == status)
        with db.reading() as conn:
            return int(conn.execute(query).scalar_one())
    finally:
        db.dispose()
