"""InstanceFilter.parse: the wire's strings to a filter, or InvalidArgument naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from orchestra_server.errors import InvalidArgument
from orchestra_server.service.operations import MAX_VARIABLE_FILTERS, InstanceFilter


def test_empty_strings_filter_nothing() -> None:
    assert InstanceFilter.parse() == InstanceFilter()


def test_every_filter_parsed() -> None:
    parsed = InstanceFilter.parse(
        definition_id="order_flow",
        version=3,
        status="running",
        has_incident=False,
        node_id="approve",
        started_after="2026-01-31T12:00:00Z",
        started_before="2026-02-01T01:30:00.123456789+02:00",
        variable=['customer={"id": 7}', "amount=1.5", 'name="x=y"'],
    )
    assert parsed == InstanceFilter(
        definition_id="order_flow",
        version=3,
        status="running",
        has_incident=False,
        node_id="approve",
        started_after=datetime(2026, 1, 31, 12, tzinfo=UTC),
        started_before=datetime(2026, 2, 1, 1, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        variables=(("customer", {"id": 7}), ("amount", 1.5), ("name", "x=y")),
    )
    assert parsed.started_before is not None
    assert parsed.started_before.tzinfo is UTC


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"definition_id": "Order Flow"}, "definition_id"),
        ({"version": 2}, "version"),
        ({"definition_id": "a", "version": -1}, "version"),
        ({"status": "paused"}, "status"),
        ({"node_id": "x" * 65}, "node_id"),
        ({"started_after": "2026-01-31"}, "started_after"),
        ({"started_after": "2026-01-31T12:00:00"}, "started_after"),
        ({"started_before": "yesterday"}, "started_before"),
        ({"started_before": "2026-02-30T00:00:00Z"}, "started_before"),
        ({"variable": ["amount"]}, "variable"),
        ({"variable": ["1amount=1"]}, "variable"),
        ({"variable": ["amount="]}, "variable"),
        ({"variable": ["amount=NaN"]}, "variable"),
        ({"variable": ["amount={'a': 1}"]}, "variable"),
        ({"variable": ["amount=" + "[" * 40 + "]" * 40]}, "variable"),
        ({"variable": ["amount=9007199254740993"]}, "variable"),
        ({"variable": ["a=1"] * (MAX_VARIABLE_FILTERS + 1)}, "variable"),
    ],
)
def test_malformed_input_names_its_parameter(arguments: dict[str, object], parameter: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{parameter}"):
        InstanceFilter.parse(**arguments)  # type: ignore[arg-type]
