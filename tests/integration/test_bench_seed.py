"""The benchmark's seeded rows are the rows a real start writes, and its plans come from them.

bench/seed.py writes instances directly for speed; the searches it measures read the
variables' digests and the tokens' incident columns, so a seeded row that differs from a
started one would measure another query.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import plans
from bench.seed import ACTOR, seed_instances
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.storage.database import Database
from orchestra_server.storage.repository import value_digest
from tests.conftest import EXAMPLES, PAGE_TOKEN_KEY, FakeClock

CALLER = Caller("default", "site")


def _rows(database: Database, instance_id: str) -> dict[str, Any]:
    """An instance's rows without what differs between any two starts (ids, times, the actor)."""
    with database.engine.connect() as conn:
        instance = conn.execute(
            text(
                "SELECT seq, tenant_id, definition_id, definition_pk, status, created_at, updated_at,"
                " ended_at FROM instances WHERE id = :id"
            ),
            {"id": instance_id},
        ).one()
        tokens = conn.execute(
            text(
                "SELECT id, tenant_id, node_id, status, ordinal, arrived_by, due_at, message, incident_kind,"
                " retry, since, claimed_until FROM tokens WHERE instance_seq = :seq ORDER BY ordinal"
            ),
            {"seq": instance.seq},
        ).all()
        variables = conn.execute(
            text("SELECT name, value, value_digest FROM variables WHERE instance_seq = :seq ORDER BY name"),
            {"seq": instance.seq},
        ).all()
        [audit] = conn.execute(
            text("SELECT tenant_id, action, detail FROM audit WHERE instance_id = :id"), {"id": instance_id}
        ).all()
    token_ids = [t.id for t in tokens]
    detail = audit.detail
    for n, token_id in enumerate(token_ids):
        detail = detail.replace(token_id, f"token-{n}")
    return {
        "instance": (
            instance.tenant_id,
            instance.definition_id,
            instance.definition_pk,
            instance.status,
            instance.created_at == instance.updated_at,
            instance.ended_at,
        ),
        # Every time a start sets is its own time, the instance's creation.
        "tokens": [
            (
                *t[1:6],
                t.due_at,
                t.message,
                t.incident_kind,
                t.retry,
                t.since == instance.created_at,
                t.claimed_until,
            )
            for t in tokens
        ],
        "variables": [(v.name, v.value if v.name != "reference" else "", v.value_digest) for v in variables],
        "digests_match_values": all(v.value_digest == value_digest(v.value) for v in variables),
        "audit": (audit.tenant_id, audit.action, json.loads(detail)),
    }


def test_a_seeded_instance_is_written_as_a_started_one(database: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    DefinitionService(database, clock=clock).deploy(
        [EXAMPLES / "three_step.yaml", EXAMPLES / "expense_approval.yaml"]
    )
    processes = ProcessService(
        database, clock=clock, new_id=lambda: str(uuid.uuid4()), page_token_key=PAGE_TOKEN_KEY
    )
    started = {
        "three_step": processes.start_process(CALLER, "three_step", {"amount": 1, "reference": "x"}),
        "expense_approval": processes.start_process(CALLER, "expense_approval", {"reference": "x"}),
    }
    seeded = seed_instances("", "default", 2, keyed="reference", incident_every=2, database=database)
    by_definition = {"three_step": seeded[0][0], "expense_approval": seeded[1][0]}
    for definition_id, instance_id in by_definition.items():
        expected = _rows(database, started[definition_id])
        actual = _rows(database, instance_id)
        for row in (expected, actual):
            # Digests of the per-instance key differ with its value; the rest must be equal.
            row["variables"] = [v if v[0] != "reference" else v[:2] for v in row["variables"]]
        assert actual == expected, definition_id
    incident = _rows(database, by_definition["expense_approval"])
    assert incident["tokens"][0][2] == "incident"
    assert incident["tokens"][0][7] == "condition_failed"
    assert incident["digests_match_values"]
    with database.engine.connect() as conn:
        actors = conn.execute(
            text("SELECT DISTINCT actor FROM audit WHERE action = 'instance.start'")
        ).scalars()
        assert ACTOR in set(actors)


def test_the_plans_are_read_from_the_seeded_tables(database: Database) -> None:
    clock = FakeClock()
    DefinitionService(database, clock=clock).deploy(
        [EXAMPLES / "three_step.yaml", EXAMPLES / "expense_approval.yaml"]
    )
    seed_instances("", "default", 300, keyed="reference", incident_every=10, database=database)
    url = database.engine.url.render_as_string(hide_password=False)
    explained = plans.explain(url, "default")
    assert explained["database"] == ("sqlite" if url.startswith("sqlite") else "postgres")
    assert set(explained["plans"]) == {
        "SearchInstances variable=",
        "SearchInstances has_incident=true",
        "ListIncidents (oldest first)",
    }
    by_variable = "\n".join(explained["plans"]["SearchInstances variable="]["plan"])
    incidents = "\n".join(explained["plans"]["ListIncidents (oldest first)"]["plan"])
    if explained["database"] == "sqlite":
        assert "ix_variables_tenant_name_digest_seq" in by_variable, by_variable
        assert "ix_tokens_incidents_since" in incidents, incidents
    else:
        # EXPLAIN ANALYZE ran the statements: the key matched its one instance, every incident read.
        assert "ix_variables_tenant_name_digest_seq" in by_variable, by_variable
        assert "rows=30 loops=1" in incidents, incidents
    markdown = plans.markdown(explained)
    assert markdown.count("```sql") == 3
