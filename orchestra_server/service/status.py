"""The engine's state at a glance, for metrics: counted in storage, read in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database


@dataclass(frozen=True)
class EngineState:
    instances_by_status: dict[str, int]
    parked_tokens: int
    # Parked tokens already due and not yet fired: what the schedulers have yet to do.
    due_backlog: int


def read_engine_state(database: Database, now: datetime) -> EngineState:
    with database.reading() as conn:
        return EngineState(
            instances_by_status=repo.count_instances_by_status(conn),
            parked_tokens=repo.count_parked_tokens(conn),
            due_backlog=repo.due_backlog(conn, now),
        )
