"""Incidents as data, the token limit, and numbers in routing conditions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from orchestra_server.engine import engine, parse
from orchestra_server.engine.model import (
    Definition,
    EventKind,
    IncidentKind,
    InstanceStatus,
    Retry,
    TokenStatus,
)
from tests.unit.engine.support import HOUR, NOW, Driver, define

PARKED, WAITING, INCIDENT = TokenStatus.PARKED, TokenStatus.WAITING, TokenStatus.INCIDENT
RUNNING, COMPLETED = InstanceStatus.RUNNING, InstanceStatus.COMPLETED


def fan_out(width: int, *, before: str = "", when: str | None = None) -> Definition:
    """`width` passthrough nodes, each routing to every one of `width` wait nodes: width^2 tokens.

    With `before` a node of that type sits between the start and the fan-out.
    """
    nodes: dict[str, Any] = {"s": {"type": "start"}, "fan": {"type": "passthrough"}, "e": {"type": "end"}}
    flows: list[dict[str, Any]] = []
    first = "s"
    if before:
        nodes["hold"] = {"type": before}
        if before == "wait":
            nodes["hold"]["timeout"] = {"after": "PT1H", "to": "fan"}
        if before == "timer":
            nodes["hold"]["after"] = "PT1H"
        flows.append({"from": "s", "to": "hold"})
        first = "hold"
    flows.append({"from": first, "to": "fan"})
    for i in range(width):
        nodes[f"p{i}"] = {"type": "passthrough"}
        nodes[f"w{i}"] = {"type": "wait"}
        flow: dict[str, Any] = {"from": "fan", "to": f"p{i}"}
        if when is not None and i > 0:
            flow["when"] = when
        flows.append(flow)
        flows.append({"from": f"w{i}", "to": "e"})
    for i in range(width):
        for j in range(width):
            flows.append({"from": f"p{i}", "to": f"w{j}"})
    return parse({"id": "fan", "nodes": nodes, "flows": flows}, source="fan.yaml")


def test_every_token_says_since_when_it_rests() -> None:
    run = Driver(
        define("""
    id: rest
    nodes: {s: {type: start}, w: {type: wait}, e: {type: end}}
    flows: [{from: s, to: w}, {from: w, to: e}]
    """)
    )
    run.start()
    assert run.one("w").since == NOW


def test_a_start_over_the_token_limit_is_one_incident() -> None:
    run = Driver(fan_out(40))
    step = run.start()
    (token,) = run.live
    assert (token.node_id, token.status, token.incident) == ("s", INCIDENT, IncidentKind.TOKEN_LIMIT)
    assert str(engine.TOKEN_LIMIT) in (token.reason or "")
    assert step.status is RUNNING
    assert [e.kind for e in step.events] == [EventKind.STARTED, EventKind.INCIDENT]
    assert step.events[-1].incident is IncidentKind.TOKEN_LIMIT


def test_just_under_the_token_limit_runs() -> None:
    run = Driver(fan_out(31))
    run.start()
    assert len(run.live) == 31 * 31 <= engine.TOKEN_LIMIT
    assert all(t.status is PARKED for t in run.live)


def test_a_token_limit_incident_retries_the_same_move() -> None:
    run = Driver(fan_out(4, when="wide"), {"wide": True}, token_limit=10)
    run.start()
    stuck = run.one("s", INCIDENT)
    assert stuck.retry is Retry.ARRIVE
    run.variables["wide"] = False
    run.signal(stuck.id)
    assert [t.node_id for t in run.live] == ["w0", "w1", "w2", "w3"]


def test_a_signal_over_the_token_limit_leaves_one_incident_at_the_signalled_node() -> None:
    run = Driver(fan_out(4, before="wait", when="wide"), {"wide": True}, token_limit=10)
    run.start()
    hold = run.one("hold", PARKED)
    step = run.signal(hold.id)
    assert step.consumed == (hold.id,)
    stuck = run.one("hold", INCIDENT)
    assert (stuck.incident, stuck.retry, len(run.live)) == (IncidentKind.TOKEN_LIMIT, Retry.ROUTE_OUT, 1)
    run.variables["wide"] = False
    run.signal(stuck.id)
    assert len(run.live) == 4


@pytest.mark.parametrize(("before", "retry"), [("wait", Retry.TIMEOUT), ("timer", Retry.ROUTE_OUT)])
def test_a_firing_over_the_token_limit_leaves_one_incident(before: str, retry: Retry) -> None:
    run = Driver(fan_out(4, before=before, when="wide"), {"wide": True}, token_limit=10)
    run.start()
    hold = run.one("hold", PARKED)
    run.fire(hold.id, now=NOW + HOUR)
    stuck = run.one("hold", INCIDENT)
    assert (stuck.incident, stuck.retry, len(run.live)) == (IncidentKind.TOKEN_LIMIT, retry, 1)
    # Still over the limit: the retry stops the same way.
    run.signal(stuck.id)
    assert run.one("hold", INCIDENT).incident is IncidentKind.TOKEN_LIMIT
    run.variables["wide"] = False
    run.signal(run.one("hold").id)
    assert len(run.live) == 4


def test_retrying_an_incident_over_the_token_limit_keeps_its_retry() -> None:
    definition = define("""
    id: join_then_fan
    nodes:
      s: {type: start}
      fan: {type: passthrough}
      a: {type: wait}
      b: {type: wait}
      c: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: fan, when: "go"}
      - {from: fan, to: a}
      - {from: fan, to: b}
      - {from: fan, to: c}
      - {from: a, to: e}
      - {from: b, to: e}
      - {from: c, to: e}
    """)
    run = Driver(definition, {}, token_limit=2)
    run.start()
    failed = run.one("s", INCIDENT)
    assert failed.incident is IncidentKind.CONDITION_FAILED
    run.variables["go"] = True
    run.signal(failed.id)
    stuck = run.one("s", INCIDENT)
    assert (stuck.incident, stuck.retry) == (IncidentKind.TOKEN_LIMIT, Retry.ROUTE_OUT)


def test_legacy_incidents_without_a_kind_retry_as_before() -> None:
    run = Driver(
        define("""
    id: legacy
    nodes: {s: {type: start}, w: {type: wait}, e: {type: end}}
    flows: [{from: s, to: w}, {from: w, to: e, when: "ok"}]
    """),
        {"ok": False},
    )
    run.start()
    run.signal(run.one("w").id)
    incident = run.one("w", INCIDENT)
    # As a row from before kinds were recorded reads back: no kind of its own, no retry.
    old = type(incident)(
        incident.id, incident.node_id, incident.status, incident.ordinal, incident.arrived_by,
        incident.due_at, incident.reason, IncidentKind.UNCLASSIFIED, None, incident.since,
    )  # fmt: skip
    run.tokens[old.id] = old
    run.variables["ok"] = True
    assert run.signal(old.id).status is COMPLETED


ROUTE = """
id: numbers
nodes:
  s: {type: start, split: first}
  high: {type: wait}
  low: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: high, when: "%s"}
  - {from: s, to: low}
  - {from: high, to: e}
  - {from: low, to: e}
"""


@pytest.mark.parametrize(
    ("condition", "variables", "expected"),
    [
        ("price * 1.1 > 10.5", {"price": 10}, "high"),
        ("price * 1.1 > 10.5", {"price": 10.0}, "high"),
        ("price * 1.1 > 10.5", {"price": 10.5}, "high"),
        ("price * 1.1 > 10.5", {"price": 9}, "low"),
        ("amount > 1000", {"amount": 1500}, "high"),
        ("amount > 1000", {"amount": 1500.5}, "high"),
        ("amount > 1000", {"amount": 1000}, "low"),
        ("count + 1 > 5", {"count": 5}, "high"),
        ("count + 1 > 5", {"count": 4.5}, "high"),
        ("count + 1 > 5", {"count": 4}, "low"),
        ("items[0] == 3", {"items": [3, 4]}, "high"),
        ("items[i] > 3", {"items": [3, 4], "i": 1}, "high"),
        ("total / 3 > 333.4", {"total": 1001}, "high"),
        ("n % 2 == 0", {"n": 4}, "high"),
        ("size(items) + 1 > 2", {"items": [1, 2]}, "high"),
        ("order.qty * order.price >= 100", {"order": {"qty": 4, "price": 25}}, "high"),
        ("rate == 1", {"rate": 1.0}, "high"),
        ("x in [1, 2, 3]", {"x": 2.0}, "high"),
    ],
)
def test_numbers_route_the_same_whole_or_fractional(
    condition: str, variables: dict[str, Any], expected: str
) -> None:
    run = Driver(define(ROUTE % condition), variables)
    run.start()
    assert [t.node_id for t in run.live] == [expected]


def test_a_whole_number_operation_on_a_fraction_is_an_incident_naming_the_problem() -> None:
    run = Driver(define(ROUTE % "n % 2 == 0"), {"n": 4.5})
    run.start()
    incident = run.one("s", INCIDENT)
    assert incident.incident is IncidentKind.CONDITION_FAILED
    assert "%" in (incident.reason or "")


def test_a_bad_timer_value_is_a_timer_incident() -> None:
    run = Driver(
        define("""
    id: bad_timer
    nodes: {s: {type: start}, t: {type: timer, until: "deadline"}, e: {type: end}}
    flows: [{from: s, to: t}, {from: t, to: e}]
    """),
        {"deadline": "soon"},
    )
    run.start()
    incident = run.one("t", INCIDENT)
    assert (incident.incident, incident.retry) == (IncidentKind.TIMER_INVALID, Retry.ACTIVATE)
    run.variables["deadline"] = (NOW + timedelta(minutes=5)).isoformat()
    run.signal(incident.id)
    assert run.one("t", PARKED).due_at == NOW + timedelta(minutes=5)
