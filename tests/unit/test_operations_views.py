"""The operations API's list views are built positionally from storage rows: every field of a view
must carry the row's field of the same name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestra_server.service import operations
from orchestra_server.storage import repository as repo

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def test_an_instance_overview_view_carries_each_field_of_its_row() -> None:
    row = repo.InstanceOverview(
        seq=7,
        id="instance-id",
        definition_id="definition-id",
        definition_version=3,
        status="running",
        started_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        ended_at=T0 + timedelta(seconds=2),
        open_incidents=5,
    )
    view = operations._overview(row)
    assert view._asdict() == {name: getattr(row, name) for name in view._fields}


def test_an_incident_view_carries_each_field_of_its_row() -> None:
    row = repo.IncidentRow(
        token_id="token-id",
        node_id="node-id",
        kind="condition",
        reason="why",
        since=T0,
        instance_id="instance-id",
        definition_id="definition-id",
        definition_version=4,
    )
    view = operations._incident(row)
    assert view._asdict() == {name: getattr(row, name) for name in view._fields}
