"""Default flows at run time (taken only when no other flow is, wherever listed) and calendar due times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orchestra_server.engine.definition import parse, to_data
from orchestra_server.engine.model import EventKind, IncidentKind, TokenStatus
from tests.unit.engine.support import Driver, define

PARKED, INCIDENT = TokenStatus.PARKED, TokenStatus.INCIDENT


def routing(split: str, *, default_first: bool) -> Any:
    """Routing node `r` with two conditioned flows and a default, the default first or last."""
    default = "{from: r, to: other, default: true}"
    conditioned = ['{from: r, to: big, when: "amount > 1000"}', '{from: r, to: vip, when: "vip"}']
    listed = [default, *conditioned] if default_first else [*conditioned, default]
    return define(
        f"""
        id: routing
        nodes:
          s: {{type: start}}
          r: {{type: passthrough, split: {split}}}
          big: {{type: wait}}
          vip: {{type: wait}}
          other: {{type: wait}}
          e: {{type: end}}
        flows:
          - {{from: s, to: r}}
          - {listed[0]}
          - {listed[1]}
          - {listed[2]}
          - {{from: big, to: e}}
          - {{from: vip, to: e}}
          - {{from: other, to: e}}
        """,
        strict=True,
    )


def parked_on(run: Driver) -> list[str]:
    return sorted(token.node_id for token in run.live if token.status is PARKED)


@pytest.mark.parametrize("default_first", [True, False])
@pytest.mark.parametrize(
    ("split", "variables", "expected"),
    [
        ("first", {"amount": 5000, "vip": True}, ["big"]),
        ("first", {"amount": 5, "vip": True}, ["vip"]),
        ("first", {"amount": 5, "vip": False}, ["other"]),
        ("all", {"amount": 5000, "vip": True}, ["big", "vip"]),
        ("all", {"amount": 5000, "vip": False}, ["big"]),
        ("all", {"amount": 5, "vip": False}, ["other"]),
    ],
)
def test_the_default_is_taken_only_when_no_other_flow_is(
    split: str, variables: dict[str, Any], expected: list[str], default_first: bool
) -> None:
    run = Driver(routing(split, default_first=default_first), variables)
    run.start()
    assert parked_on(run) == expected


def test_the_routed_event_names_the_default_flow() -> None:
    definition = routing("first", default_first=True)
    run = Driver(definition, {"amount": 1, "vip": False})
    step = run.start()
    routed = [event for event in step.events if event.kind is EventKind.ROUTED and event.node_id == "r"]
    assert len(routed) == 1
    (index,) = routed[0].flows
    assert definition.flows[index].default
    assert definition.flows[index].target == "other"


def test_a_failing_condition_is_an_incident_not_the_default() -> None:
    run = Driver(routing("first", default_first=True), {"amount": 5})
    run.start()
    token = run.one("r", INCIDENT)
    assert token.incident is IncidentKind.CONDITION_FAILED
    assert token.reason is not None
    assert "vip" in token.reason
    assert parked_on(run) == []
    run.variables["vip"] = False
    run.signal(token.id)
    assert parked_on(run) == ["other"]


def test_a_lone_default_flow_is_always_taken() -> None:
    run = Driver(
        define(
            """
            id: lone
            nodes: {s: {type: start}, w: {type: wait}, e: {type: end}}
            flows: [{from: s, to: w, default: true}, {from: w, to: e}]
            """,
            strict=True,
        )
    )
    run.start()
    assert parked_on(run) == ["w"]


def test_a_default_after_a_wait_is_taken_on_signal() -> None:
    run = Driver(
        define(
            """
            id: decide
            nodes:
              {s: {type: start}, w: {type: wait}, paid: {type: end}, recheck: {type: wait}, e: {type: end}}
            flows:
              - {from: s, to: w}
              - {from: w, to: recheck, default: true}
              - {from: w, to: paid, when: "approved"}
              - {from: recheck, to: e}
            """,
            strict=True,
        ),
        {"approved": False},
    )
    run.start()
    run.signal(run.one("w", PARKED).id)
    assert parked_on(run) == ["recheck"]


# -- calendar due times ------------------------------------------------------------------------------


def waiting(after: str) -> Any:
    return define(
        f"""
        id: calendar
        nodes:
          s: {{type: start}}
          t: {{type: timer, after: {after}}}
          w: {{type: wait, timeout: {{after: {after}, to: e}}}}
          e: {{type: end}}
        flows: [{{from: s, to: t}}, {{from: t, to: w}}, {{from: w, to: e}}]
        """,
        strict=True,
    )


@pytest.mark.parametrize(
    ("after", "now", "first", "second"),
    [
        (
            "P1M",
            datetime(2025, 1, 31, 9, tzinfo=UTC),
            datetime(2025, 2, 28, 9, tzinfo=UTC),
            datetime(2025, 3, 28, 9, tzinfo=UTC),
        ),
        (
            "P1Y",
            datetime(2024, 2, 29, tzinfo=UTC),
            datetime(2025, 2, 28, tzinfo=UTC),
            datetime(2026, 2, 28, tzinfo=UTC),
        ),
        (
            "P1M1D",
            datetime(2024, 1, 30, tzinfo=UTC),
            datetime(2024, 3, 1, tzinfo=UTC),
            datetime(2024, 4, 2, tzinfo=UTC),
        ),
    ],
)
def test_timers_and_timeouts_use_calendar_arithmetic(
    after: str, now: datetime, first: datetime, second: datetime
) -> None:
    run = Driver(waiting(after), now=now)
    run.start()
    timer = run.one("t", PARKED)
    assert timer.due_at == first
    # The timer fires when due; the wait's timeout counts from then, again by the calendar.
    run.fire(timer.id, now=first)
    assert run.one("w", PARKED).due_at == second


def test_a_calendar_due_time_past_the_calendar_is_an_incident() -> None:
    run = Driver(waiting("P1M"), now=datetime(9999, 12, 15, tzinfo=UTC))
    run.start()
    token = run.one("t", INCIDENT)
    assert token.incident is IncidentKind.TIMER_INVALID
    assert token.reason == "the timer's due time is out of range"


def test_calendar_durations_round_trip_through_the_normal_form() -> None:
    definition = waiting("P12M")
    data = to_data(definition)
    assert data["nodes"]["t"]["after"] == "P1Y"
    assert data["nodes"]["w"]["timeout"] == {"after": "P1Y", "to": "e"}
    assert parse(data, source="again") == definition
