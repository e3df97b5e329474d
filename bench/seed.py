"""Bulk seeding with direct inserts into the real schema: what a start writes, many thousand times.

The rows are the ones ``ProcessService.start_process`` writes (instance, variables, tokens,
one audit row), column for column: the engine's own start step of the deployed definition
gives the tokens (with their rest time, incident kind, reason and retry), the service's own
functions give the stored variable texts (``limits.encode_variables``), their search digests
(``repository.value_digest``) and the audit detail (``processes.step_detail``). The engine
runs once per definition and the step is repeated with fresh token ids, so what differs from
real starts is only this: a call's instances share one creation time (and so one ``since``),
the audit actor is ``bench-seed``, and with ``due_in_past`` the timers are made due in the
past. tests/integration/test_bench_seed.py compares a seeded instance with a started one.

For the operations API's searches an instance can carry a key of its own (``keyed``: a
variable whose value is the instance's id), and every ``incident_every``-th instance can be a
start of ``expense_approval`` without an ``amount``, which stops in an incident at its
gateway (the condition cannot be evaluated), as a real start does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from orchestra_server.engine import engine
from orchestra_server.engine.model import Json, Token
from orchestra_server.service import limits
from orchestra_server.service.definitions import parse_stored
from orchestra_server.service.processes import step_detail
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database, open_database

BATCH = 5_000
ACTOR = "bench-seed"
# Started without `amount`, its gateway cannot evaluate `amount > 1000`: an incident.
INCIDENT_DEFINITION = "expense_approval"


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Start:
    """One start of a definition as the engine computes it, to be repeated with fresh ids."""

    definition_id: str
    pk: int
    step: engine.Step
    variables: dict[str, Json]


def _start(
    db: Database, tenant: str, definition_id: str, variables: Mapping[str, Json], now: datetime
) -> Start:
    with db.reading() as conn:
        found = repo.definition_for_tenant(conn, tenant, definition_id)
    if found is None:
        raise RuntimeError(f"definition {definition_id} is not deployed")
    pk, content = found
    step = engine.start(parse_stored(content), dict(variables), now=now, new_id=_new_id)
    return Start(definition_id, pk, step, dict(variables))


def keyed_value(instance_id: str) -> str:
    """The value of an instance's own key variable (see ``keyed``)."""
    return instance_id


def seed_instances(
    url: str,
    tenant: str,
    count: int,
    *,
    definition_id: str = "three_step",
    variables: Mapping[str, Json] | None = None,
    keyed: str | None = None,
    incident_every: int = 0,
    due_in_past: bool = False,
    database: Database | None = None,
) -> list[tuple[str, str]]:
    """Creates `count` running instances of the definition, each with its start step's tokens.

    Returns (instance id, first token id) pairs, oldest first. `variables` are every
    instance's start variables (default ``amount = 1``); `keyed` names one more variable whose
    value is ``keyed_value(instance id)``; every `incident_every`-th instance (0: none) is an
    incident start of ``INCIDENT_DEFINITION`` with the key only. With `due_in_past`, every
    parked token with a due time (a timer) is made due a minute ago, oldest first.
    """
    db = database or open_database(url, pool_size=1)
    try:
        now = datetime.now(UTC)
        common = {"amount": 1} if variables is None else dict(variables)
        regular = _start(db, tenant, definition_id, common, now)
        failing = _start(db, tenant, INCIDENT_DEFINITION, {}, now) if incident_every else None
        pairs: list[tuple[str, str]] = []
        due_base = now - timedelta(minutes=1) - timedelta(microseconds=count)
        for first in range(0, count, BATCH):
            size = min(BATCH, count - first)
            ids = [_new_id() for _ in range(size)]
            starts = [
                failing if failing is not None and (first + n + 1) % incident_every == 0 else regular
                for n in range(size)
            ]
            with db.writing() as conn:
                rows = conn.execute(
                    insert(repo.instances_t).returning(
                        repo.instances_t.c.id, repo.instances_t.c.seq, sort_by_parameter_order=True
                    ),
                    [
                        {
                            "id": instance_id,
                            "tenant_id": tenant,
                            "definition_id": start.definition_id,
                            "definition_pk": start.pk,
                            "status": start.step.status.value,
                            "created_at": now,
                            "updated_at": now,
                            "ended_at": None,
                        }
                        for instance_id, start in zip(ids, starts, strict=True)
                    ],
                ).all()
                seqs = {row.id: row.seq for row in rows}
                tokens: list[dict[str, Any]] = []
                stored: list[dict[str, Any]] = []
                audit: list[dict[str, Any]] = []
                for n, (instance_id, start) in enumerate(zip(ids, starts, strict=True)):
                    seq = seqs[instance_id]
                    made = []
                    for token in start.step.created:
                        due = token.due_at
                        if due is not None and due_in_past:
                            due = due_base + timedelta(microseconds=first + n)
                        made.append(replace(token, id=_new_id(), due_at=due))
                    pairs.append((instance_id, made[0].id if made else ""))
                    tokens += [_token_row(token, seq, tenant) for token in made]
                    values = dict(start.variables)
                    if keyed is not None:
                        values[keyed] = keyed_value(instance_id)
                    stored += [
                        {
                            "instance_seq": seq,
                            "tenant_id": tenant,
                            "name": k,
                            "value": v,
                            "value_digest": repo.value_digest(v),
                        }
                        for k, v in limits.encode_variables(values).items()
                    ]
                    detail = step_detail(replace(start.step, created=tuple(made)))
                    audit.append(
                        {
                            "at": now,
                            "tenant_id": tenant,
                            "actor": ACTOR,
                            "action": "instance.start",
                            "instance_id": instance_id,
                            "detail": repo.dump_json(
                                {"definition_id": start.definition_id, "definition_pk": start.pk, **detail}
                            ),
                        }
                    )
                if tokens:
                    conn.execute(insert(repo.tokens_t), tokens)
                if stored:
                    conn.execute(insert(repo.variables_t), stored)
                conn.execute(insert(repo.audit_t), audit)
        if db.is_postgres:
            with db.writing() as conn:
                for table in ("instances", "tokens", "variables"):
                    conn.exec_driver_sql(f"ANALYZE {table}")
        return pairs
    finally:
        if database is None:
            db.dispose()


def _token_row(token: Token, seq: int, tenant: str) -> dict[str, Any]:
    # The columns repository.insert_tokens fills, from the same Token fields.
    return {
        "id": token.id,
        "instance_seq": seq,
        "tenant_id": tenant,
        "node_id": token.node_id,
        "status": token.status.value,
        "ordinal": token.ordinal,
        "arrived_by": token.arrived_by,
        "due_at": token.due_at,
        "message": token.reason[:1000] if token.reason else None,
        "incident_kind": token.incident.value if token.incident is not None else None,
        "retry": token.retry.value if token.retry is not None else None,
        "since": token.since,
    }


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
