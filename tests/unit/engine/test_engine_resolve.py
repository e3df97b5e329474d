"""Resolving incidents by hand: skip moves a token on as if its node had completed, cancel_branch
removes it and lets the rest of the instance carry on (or complete)."""

from __future__ import annotations

import pytest

from orchestra_server.engine.model import EventKind, IncidentKind, InstanceStatus, TokenStatus
from orchestra_server.errors import TokenNotParked
from tests.unit.engine.support import Driver, define

PARKED, WAITING, INCIDENT = TokenStatus.PARKED, TokenStatus.WAITING, TokenStatus.INCIDENT
RUNNING, COMPLETED = InstanceStatus.RUNNING, InstanceStatus.COMPLETED

ROUTED = """
id: routed
nodes:
  s: {type: start}
  x: {type: gateway, gateway: exclusive}
  big: {type: wait}
  small: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: x}
  - {from: x, to: big, when: "amount > 1000"}
  - {from: x, to: small, when: "amount > 10"}
  - {from: big, to: e}
  - {from: small, to: e}
"""
MISMATCH = """
id: mismatch
nodes:
  s: {type: start}
  x: {type: gateway, gateway: exclusive}
  a: {type: passthrough}
  b: {type: passthrough}
  j: {type: gateway, gateway: parallel}
  after: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: x}
  - {from: x, to: a, when: "left"}
  - {from: x, to: b}
  - {from: a, to: j}
  - {from: b, to: j}
  - {from: j, to: after}
  - {from: after, to: e}
"""


def test_skip_routes_out_choosing_flows_as_usual() -> None:
    run = Driver(define(ROUTED), {"amount": 5})
    run.start()
    stuck = run.one("x", INCIDENT)
    run.variables["amount"] = 50
    step = run.skip(stuck.id)
    assert run.kinds(step)[:2] == [EventKind.SKIPPED, EventKind.ROUTED]
    assert step.consumed == (stuck.id,)
    assert run.one("small", PARKED)


def test_skip_with_nothing_to_take_is_a_fresh_incident() -> None:
    run = Driver(define(ROUTED), {"amount": 5})
    run.start()
    stuck = run.one("x", INCIDENT)
    run.skip(stuck.id)
    again = run.one("x", INCIDENT)
    assert again.id != stuck.id
    assert again.incident is IncidentKind.NO_FLOW_MATCHED


def test_skip_activates_a_join_that_could_never_fire_with_what_arrived() -> None:
    run = Driver(define(MISMATCH), {"left": True})
    run.start()
    stuck = run.one("j", INCIDENT)
    assert stuck.incident is IncidentKind.JOIN_UNREACHABLE
    step = run.skip(stuck.id)
    assert EventKind.SKIPPED in run.kinds(step)
    assert run.one("after", PARKED).arrived_by == 5
    assert run.at("j") == []


def test_skip_a_timer_whose_until_failed_routes_out_without_waiting() -> None:
    run = Driver(
        define("""
        id: until
        nodes: {s: {type: start}, t: {type: timer, until: deadline}, w: {type: wait}, e: {type: end}}
        flows: [{from: s, to: t}, {from: t, to: w}, {from: w, to: e}]
        """),
        {"deadline": "not a time"},
    )
    run.start()
    stuck = run.one("t", INCIDENT)
    assert stuck.incident is IncidentKind.TIMER_INVALID
    run.skip(stuck.id)
    assert run.at("t") == []
    assert run.one("w", PARKED)


def test_cancel_branch_completes_when_nothing_else_is_live() -> None:
    run = Driver(define(MISMATCH), {"left": True})
    run.start()
    step = run.cancel_branch(run.one("j", INCIDENT).id)
    assert run.kinds(step) == [EventKind.BRANCH_CANCELLED, EventKind.COMPLETED]
    assert step.status is COMPLETED


def test_cancel_branch_leaves_no_threshold_marker_behind() -> None:
    run = Driver(
        define("""
        id: markers
        nodes:
          s: {type: start}
          a: {type: wait}
          b: {type: wait}
          x: {type: gateway, gateway: exclusive}
          j: {type: passthrough, join: threshold, threshold: 1}
          w: {type: wait}
          e: {type: end}
        flows:
          - {from: s, to: a}
          - {from: s, to: b}
          - {from: a, to: j}
          - {from: b, to: x}
          - {from: x, to: j, when: "go"}
          - {from: j, to: w}
          - {from: w, to: e}
        """),
        {"go": False},
    )
    run.start()
    run.signal(run.one("a").id)
    run.signal(run.one("w").id)
    assert run.markers, "the join still expects b's late token"
    run.signal(run.one("b").id)
    stuck = run.one("x", INCIDENT)
    assert run.markers
    step = run.cancel_branch(stuck.id)
    assert run.markers == []
    assert step.status is COMPLETED
    assert run.tokens == {}


def test_cancel_branch_lets_an_inclusive_join_fire() -> None:
    run = Driver(
        define("""
        id: inclusive
        nodes:
          s: {type: start}
          a: {type: wait}
          x: {type: gateway, gateway: exclusive}
          j: {type: passthrough, join: inclusive}
          w: {type: wait}
          e: {type: end}
        flows:
          - {from: s, to: a}
          - {from: s, to: x}
          - {from: a, to: j}
          - {from: x, to: j, when: "go"}
          - {from: j, to: w}
          - {from: w, to: e}
        """),
        {"go": False},
    )
    run.start()
    stuck = run.one("x", INCIDENT)
    run.signal(run.one("a").id)
    assert run.one("j", WAITING)
    step = run.cancel_branch(stuck.id)
    assert EventKind.JOIN_FIRED in run.kinds(step)
    assert run.one("w", PARKED)
    assert step.status is RUNNING


def test_cancel_branch_stops_a_join_that_needed_the_branch() -> None:
    run = Driver(
        define("""
        id: needs_both
        nodes:
          s: {type: start}
          a: {type: wait}
          x: {type: gateway, gateway: exclusive}
          j: {type: gateway, gateway: parallel}
          e: {type: end}
        flows:
          - {from: s, to: a}
          - {from: s, to: x}
          - {from: a, to: j}
          - {from: x, to: j, when: "go"}
          - {from: j, to: e}
        """),
        {"go": False},
    )
    run.start()
    stuck = run.one("x", INCIDENT)
    run.signal(run.one("a").id)
    run.cancel_branch(stuck.id)
    assert run.one("j", INCIDENT).incident is IncidentKind.JOIN_UNREACHABLE
    assert run.status is RUNNING


@pytest.mark.parametrize("how", ["skip", "cancel_branch"])
def test_only_incident_tokens_can_be_resolved(how: str) -> None:
    run = Driver(define(ROUTED), {"amount": 5000})
    run.start()
    parked = run.one("big", PARKED)
    with pytest.raises(TokenNotParked):
        getattr(run, how)(parked.id)
    with pytest.raises(TokenNotParked):
        getattr(run, how)("no-such-token")
