"""The operations clients: one method set and signature on every transport, one wire form of filters."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from orchestra_server.client.contract import OrchestraClient
from orchestra_server.client.grpc import GrpcOperationsClient, GrpcOrchestraClient
from orchestra_server.client.operations import OperationsClient, instance_filters, rfc3339
from orchestra_server.client.rest import RestOperationsClient, RestOrchestraClient
from orchestra_server.local_client import LocalOperationsClient, LocalOrchestraClient


def _methods(cls: type) -> dict[str, list[tuple[str, Any, Any]]]:
    """Each public method's parameters: names, kinds and defaults (annotations are spelled apart)."""
    return {
        name: [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize(
    ("contract", "implementation"),
    [
        (OperationsClient, GrpcOperationsClient),
        (OperationsClient, RestOperationsClient),
        (OperationsClient, LocalOperationsClient),
        (OrchestraClient, GrpcOrchestraClient),
        (OrchestraClient, RestOrchestraClient),
        (OrchestraClient, LocalOrchestraClient),
    ],
    ids=lambda cls: cls.__name__,
)
def test_every_transport_offers_the_contract_exactly(contract: type, implementation: type) -> None:
    promised = _methods(contract)
    offered = {name: sig for name, sig in _methods(implementation).items() if name in promised}
    assert set(offered) == set(promised)
    for name, signature in promised.items():
        assert offered[name] == signature, name


def test_filters_take_their_wire_form() -> None:
    query = instance_filters(
        definition_id="fragile",
        version=2,
        status="running",
        has_incident=False,
        node_id="task",
        started_after=datetime(2026, 1, 31, 13, 0, tzinfo=timezone(timedelta(hours=1))),
        started_before="2026-02-01T00:00:00Z",
        variables={"owner": "ann", "amount": 1500, "tags": ["a", "b"], "none": None, "ok": True},
    )
    assert (query.definition_id, query.version, query.status, query.has_incident, query.node_id) == (
        "fragile",
        2,
        "running",
        False,
        "task",
    )
    assert (query.started_after, query.started_before) == ("2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z")
    assert query.variable == ('owner="ann"', "amount=1500", 'tags=["a","b"]', "none=null", "ok=true")


def test_absent_filters_are_the_wires_zero_values() -> None:
    query = instance_filters()
    assert (query.definition_id, query.version, query.status, query.has_incident, query.node_id) == (
        "",
        0,
        "",
        None,
        "",
    )
    assert (query.started_after, query.started_before, query.variable) == ("", "", ())


def test_times_are_sent_in_utc_and_naive_ones_as_they_are() -> None:
    assert rfc3339(datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)) == "2026-03-01T09:30:15.250000Z"
    # A naive time names no instant: the server refuses it, naming the filter.
    assert rfc3339(datetime(2026, 3, 1, 9, 30)) == "2026-03-01T09:30:00"
    assert rfc3339(None) == ""
    assert rfc3339("tomorrow") == "tomorrow"
