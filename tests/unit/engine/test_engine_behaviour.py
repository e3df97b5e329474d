"""The engine's node, split, join, incident and status semantics, driven through small definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestra_server.engine import engine
from orchestra_server.engine.model import EventKind, IncidentKind, InstanceStatus, Retry, Token, TokenStatus
from orchestra_server.errors import TokenNotParked
from tests.unit.engine.support import HOUR, NOW, Driver, define, load_file

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

PARKED, WAITING, INCIDENT = TokenStatus.PARKED, TokenStatus.WAITING, TokenStatus.INCIDENT
RUNNING, COMPLETED = InstanceStatus.RUNNING, InstanceStatus.COMPLETED


# -- simple paths and statuses ------------------------------------------------------------------


def test_three_step_completes_with_one_signal() -> None:
    run = Driver(load_file(EXAMPLES / "three_step.yaml"))
    step = run.start()
    assert step.status is RUNNING
    task = run.one("task", PARKED)
    assert task.due_at is None
    assert task.ordinal == 2  # after the token placed on the start node
    assert run.kinds(step) == [EventKind.STARTED, EventKind.ROUTED, EventKind.PARKED]

    step = run.signal(task.id)
    assert step.status is COMPLETED
    assert step.created == ()
    assert step.consumed == (task.id,)
    assert run.kinds(step) == [EventKind.SIGNALLED, EventKind.ROUTED, EventKind.ENDED, EventKind.COMPLETED]


def test_start_straight_to_end_completes_at_once() -> None:
    run = Driver(
        define("""
        id: quick
        nodes: {s: {type: start}, p: {type: passthrough}, g: {type: gateway}, e: {type: end}}
        flows: [{from: s, to: p}, {from: p, to: g}, {from: g, to: e}]
        """)
    )
    step = run.start()
    assert step.status is COMPLETED
    assert (step.created, step.consumed) == ((), ())
    assert [(e.kind, e.node_id) for e in step.events] == [
        (EventKind.STARTED, "s"),
        (EventKind.ROUTED, "s"),
        (EventKind.ROUTED, "p"),
        (EventKind.ROUTED, "g"),
        (EventKind.ENDED, "e"),
        (EventKind.COMPLETED, None),
    ]


def test_routed_event_names_flows_and_new_tokens() -> None:
    run = Driver(
        define("""
        id: fan
        nodes: {s: {type: start}, a: {type: wait}, b: {type: wait}, e: {type: end}}
        flows: [{from: s, to: a}, {from: s, to: b}, {from: a, to: e}, {from: b, to: e}]
        """)
    )
    step = run.start()
    routed = step.events[1]
    assert routed.kind is EventKind.ROUTED
    assert routed.flows == (0, 1)
    assert routed.tokens == tuple(t.id for t in step.created)
    assert [t.arrived_by for t in step.created] == [0, 1]


def test_ids_come_only_from_new_id_and_ordinals_grow() -> None:
    run = Driver(load_file(EXAMPLES / "parallel_review.yaml"))
    run.start()
    ordinals = [t.ordinal for t in run.live]
    assert ordinals == sorted(ordinals)
    assert {t.id for t in run.live} <= set(run.issued)
    oldest = run.live[0]
    step = run.signal(oldest.id)
    assert step.created[0].ordinal > max(ordinals)


def test_naive_now_is_a_programming_error() -> None:
    definition = load_file(EXAMPLES / "three_step.yaml")
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.start(definition, {}, now=datetime(2030, 1, 1), new_id=lambda: "x")


def test_the_same_call_gives_the_same_step() -> None:
    definition = load_file(EXAMPLES / "expense_approval.yaml")

    def run() -> engine.Step:
        ids = iter(f"id{n}" for n in range(100))
        return engine.start(definition, {"amount": 5}, now=NOW, new_id=lambda: next(ids))

    assert run() == run()


# -- wait, timer and timeout ------------------------------------------------------------------------


def test_expense_small_amount_goes_through_timer() -> None:
    run = Driver(load_file(EXAMPLES / "expense_approval.yaml"), {"amount": 1000.0})
    run.start()
    timer = run.one("cool_off", PARKED)
    assert timer.due_at == NOW + HOUR
    with pytest.raises(TokenNotParked):
        run.fire(timer.id, now=NOW + HOUR - timedelta(microseconds=1))
    step = run.fire(timer.id, now=NOW + HOUR)
    assert step.status is COMPLETED
    assert EventKind.TIMER_FIRED in run.kinds(step)
    assert [e.node_id for e in step.events if e.kind is EventKind.ENDED] == ["paid"]


@pytest.mark.parametrize(("approved", "end"), [(True, "paid"), (False, "rejected")])
def test_expense_large_amount_waits_for_finance(approved: bool, end: str) -> None:
    run = Driver(load_file(EXAMPLES / "expense_approval.yaml"), {"amount": 1000.5})
    run.start()
    approve = run.one("approve", PARKED)
    assert approve.due_at == NOW + 48 * HOUR
    run.variables["approved"] = approved
    step = run.signal(approve.id)
    if approved:
        assert step.status is RUNNING
        run.signal(run.one("cool_off").id)  # signalling a timer fires it early
    assert run.status is COMPLETED
    assert [e.node_id for e in run.events if e.kind is EventKind.ENDED] == [end]


def test_wait_timeout_fires_along_the_timeout_flow() -> None:
    definition = load_file(EXAMPLES / "expense_approval.yaml")
    run = Driver(definition, {"amount": 5000})
    run.start()
    approve = run.one("approve")
    with pytest.raises(TokenNotParked):
        run.fire(approve.id, now=NOW + 47 * HOUR)
    step = run.fire(approve.id, now=NOW + 48 * HOUR)
    escalate = run.one("escalate", PARKED)
    timeout_flow = definition.flows[escalate.arrived_by or 0]
    assert timeout_flow.timeout
    assert (timeout_flow.source, timeout_flow.target) == ("approve", "escalate")
    assert step.consumed == (approve.id,)
    assert step.events[0].kind is EventKind.TIMEOUT_FIRED
    assert step.events[0].flows == (timeout_flow.index,)
    run.variables["approved"] = False
    assert run.signal(escalate.id).status is COMPLETED


def test_fire_due_refuses_waits_without_timeout_and_tokens_not_parked() -> None:
    run = Driver(load_file(EXAMPLES / "parallel_review.yaml"))
    run.start()
    legal = run.one("legal")
    with pytest.raises(TokenNotParked):
        run.fire(legal.id, now=NOW + 1000 * HOUR)
    run.signal(legal.id)
    waiting = run.one("all_signed", WAITING)
    with pytest.raises(TokenNotParked):
        run.fire(waiting.id)
    with pytest.raises(TokenNotParked):
        run.fire("no-such-token")


def test_timer_until_from_a_variable_and_from_cel() -> None:
    text = """
    id: until
    nodes:
      s: {type: start}
      t: {type: timer, until: "%s"}
      e: {type: end}
    flows: [{from: s, to: t}, {from: t, to: e}]
    """
    run = Driver(define(text % "deadline"), {"deadline": "2030-01-02T00:00:00+02:00"})
    run.start()
    assert run.one("t").due_at == datetime(2030, 1, 1, 22, tzinfo=UTC)

    run = Driver(define(text % "timestamp(deadline) + duration('1h')"), {"deadline": "2030-01-02T00:00:00Z"})
    run.start()
    due = run.one("t").due_at
    assert due == datetime(2030, 1, 2, 1, tzinfo=UTC)
    assert run.fire(run.one("t").id, now=due).status is COMPLETED


@pytest.mark.parametrize(
    "deadline",
    ["2030-01-02T00:00:00", "tomorrow", 42, None, "2030-02-30T00:00:00Z"],
    ids=["naive", "words", "number", "null", "no-such-day"],
)
def test_bad_until_is_an_incident_and_retry_reruns_the_timer(deadline: object) -> None:
    definition = define("""
    id: until
    nodes: {s: {type: start}, t: {type: timer, until: deadline}, e: {type: end}}
    flows: [{from: s, to: t}, {from: t, to: e}]
    """)
    run = Driver(definition, {"deadline": deadline})
    step = run.start()
    incident = run.one("t", INCIDENT)
    assert incident.due_at is None
    assert "deadline" in (incident.reason or "")
    assert step.status is RUNNING
    with pytest.raises(TokenNotParked):
        run.fire(incident.id)

    run.signal(incident.id)  # not fixed yet: a fresh incident
    again = run.one("t", INCIDENT)
    assert again.id != incident.id

    run.variables["deadline"] = "2030-01-03T00:00:00Z"
    step = run.signal(again.id)
    assert step.consumed == (again.id,)
    parked = run.one("t", PARKED)
    assert parked.due_at == datetime(2030, 1, 3, tzinfo=UTC)


def test_hand_signal_on_a_wait_with_timeout_takes_the_normal_route() -> None:
    run = Driver(load_file(EXAMPLES / "expense_approval.yaml"), {"amount": 5000, "approved": True})
    run.start()
    run.signal(run.one("approve").id)
    assert run.at("escalate") == []
    assert run.one("cool_off", PARKED)


# -- splits -----------------------------------------------------------------------------------------

SPLITS = """
id: splits
nodes:
  s: {type: start, split: %s}
  a: {type: wait}
  b: {type: wait}
  c: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: a, when: "x > 1"}
  - {from: s, to: b, when: "x > 2"}
  - {from: s, to: c}
  - {from: a, to: e}
  - {from: b, to: e}
  - {from: c, to: e}
"""


@pytest.mark.parametrize(
    ("split", "x", "expected"),
    [
        ("all", 3, ["a", "b", "c"]),
        ("all", 2, ["a", "c"]),
        ("all", 0, ["c"]),
        ("first", 3, ["a"]),
        ("first", 2.5, ["a"]),
        ("first", 0, ["c"]),
    ],
)
def test_split_all_and_first(split: str, x: float, expected: list[str]) -> None:
    run = Driver(define(SPLITS % split), {"x": x})
    run.start()
    assert [t.node_id for t in run.live] == expected
    for token in run.live:
        run.signal(token.id)
    assert run.status is COMPLETED


def test_split_first_does_not_evaluate_conditions_after_the_one_taken() -> None:
    run = Driver(
        define("""
        id: lazy
        nodes: {s: {type: gateway, gateway: exclusive}, b: {type: start}, e: {type: end}}
        flows: [{from: b, to: s}, {from: s, to: e, when: "true"}, {from: s, to: e, when: "missing > 1"}]
        """)
    )
    assert run.start().status is COMPLETED


def test_numbers_compare_as_numbers_whether_int_or_float() -> None:
    text = """
    id: nums
    nodes: {s: {type: start}, big: {type: wait}, small: {type: wait}, e: {type: end}}
    flows:
      - {from: s, to: big, when: "amount == 1000 && amount >= 1000.0 && amount < 1000.5"}
      - {from: s, to: small, when: "amount != 1000"}
      - {from: big, to: e}
      - {from: small, to: e}
    """
    for amount in (1000, 1000.0):
        run = Driver(define(text), {"amount": amount})
        run.start()
        assert [t.node_id for t in run.live] == ["big"]


# -- joins ------------------------------------------------------------------------------------------


def test_parallel_review_joins_all_three() -> None:
    run = Driver(load_file(EXAMPLES / "parallel_review.yaml"))
    run.start()
    assert [t.node_id for t in run.live] == ["legal", "security", "finance"]
    run.signal(run.one("security").id)
    run.signal(run.one("legal").id)
    waiting = run.at("all_signed", WAITING)
    assert len(waiting) == 2
    step = run.signal(run.one("finance").id)
    assert step.status is COMPLETED
    fired = [e for e in step.events if e.kind is EventKind.JOIN_FIRED]
    assert len(fired) == 1
    assert set(fired[0].tokens) >= {t.id for t in waiting}
    assert set(step.consumed) >= {t.id for t in waiting}


JOIN = """
id: joins
nodes:
  s: {type: start}
  a: {type: wait}
  b: {type: wait}
  c: {type: wait}
  j: {type: passthrough, join: %s}
  after: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: a}
  - {from: s, to: b}
  - {from: s, to: c}
  - {from: a, to: j}
  - {from: b, to: j}
  - {from: c, to: j}
  - {from: j, to: after}
  - {from: after, to: e}
"""


def test_immediate_join_activates_on_every_arrival() -> None:
    run = Driver(define(JOIN % "immediate"))
    run.start()
    for node in ("a", "b", "c"):
        run.signal(run.one(node).id)
    assert len(run.at("after", PARKED)) == 3


def test_threshold_join_fires_at_n_and_absorbs_the_late_arrival() -> None:
    run = Driver(define((JOIN % "threshold").replace("join: threshold", "join: threshold, threshold: 2")))
    run.start()
    run.signal(run.one("c").id)
    assert run.at("after") == []
    step = run.signal(run.one("a").id)
    assert run.one("after", PARKED)
    assert [e.kind for e in step.events].count(EventKind.JOIN_FIRED) == 1
    assert [m.arrived_by for m in run.markers] == [4]
    # b arrives late: the activation it belonged to has fired, so it is absorbed, not kept waiting.
    late = run.one("b")
    step = run.signal(late.id)
    absorbed = next(e for e in step.events if e.kind is EventKind.ABSORBED)
    assert (absorbed.node_id, absorbed.flows) == ("j", (4,))
    assert run.at("j") == []
    assert run.markers == []
    assert run.signal(run.one("after").id).status is COMPLETED


def test_threshold_join_resets_when_the_late_token_can_no_longer_come() -> None:
    definition = define("""
    id: race
    nodes:
      s: {type: start}
      a: {type: wait}
      b: {type: wait}
      c: {type: wait}
      j: {type: passthrough, join: threshold, threshold: 1}
      e: {type: end}
    flows:
      - {from: s, to: a}
      - {from: s, to: b}
      - {from: b, to: e}
      - {from: a, to: j}
      - {from: b, to: c}
      - {from: c, to: j}
      - {from: j, to: e}
    """)
    run = Driver(definition)
    run.start()
    run.signal(run.one("a").id)
    assert [m.arrived_by for m in run.markers] == [5]
    # b routes to c and to the end: c still owes the join its late token.
    run.signal(run.one("b").id)
    assert run.markers
    step = run.signal(run.one("c").id)
    assert EventKind.ABSORBED in run.kinds(step)
    assert step.status is COMPLETED


def test_threshold_join_in_a_loop_starts_each_round_afresh() -> None:
    definition = define("""
    id: rounds
    nodes:
      s: {type: start}
      fork: {type: passthrough}
      a: {type: wait}
      b: {type: wait}
      c: {type: wait}
      j: {type: passthrough, join: threshold, threshold: 2}
      review: {type: wait}
      again: {type: gateway, gateway: exclusive}
      e: {type: end}
    flows:
      - {from: s, to: fork}
      - {from: fork, to: a}
      - {from: fork, to: b}
      - {from: fork, to: c}
      - {from: a, to: j}
      - {from: b, to: j}
      - {from: c, to: j}
      - {from: j, to: review}
      - {from: review, to: again}
      - {from: again, to: fork, when: "rounds < 2"}
      - {from: again, to: e}
    """)
    run = Driver(definition, {"rounds": 0})
    run.start()
    run.signal(run.one("a").id)
    run.signal(run.one("b").id)
    # The second round starts before the first round's late token arrives.
    run.variables["rounds"] = 1
    run.signal(run.one("review").id)
    assert len(run.at("c")) == 2
    run.signal(run.at("c")[0].id)
    assert run.at("j") == [], "the first round's late token was absorbed"
    # Round two needs two fresh arrivals: one is not enough.
    run.signal(run.one("a").id)
    assert run.one("j", WAITING)
    run.signal(run.one("c").id)
    assert run.one("review", PARKED)
    run.variables["rounds"] = 2
    run.signal(run.one("review").id)
    assert run.status is RUNNING
    step = run.signal(run.one("b").id)
    assert EventKind.ABSORBED in run.kinds(step)
    assert step.status is COMPLETED


def test_wait_all_after_an_exclusive_split_is_an_incident_not_a_silent_wait() -> None:
    definition = define("""
    id: mismatch
    nodes:
      s: {type: start}
      x: {type: gateway, gateway: exclusive}
      a: {type: passthrough}
      b: {type: passthrough}
      j: {type: gateway, gateway: parallel}
      e: {type: end}
    flows:
      - {from: s, to: x}
      - {from: x, to: a, when: "left"}
      - {from: x, to: b}
      - {from: a, to: j}
      - {from: b, to: j}
      - {from: j, to: e}
    """)
    run = Driver(definition, {"left": True})
    step = run.start()
    stuck = run.one("j", INCIDENT)
    assert stuck.incident is IncidentKind.JOIN_UNREACHABLE
    assert stuck.retry is Retry.ARRIVE
    assert "can never fire" in (stuck.reason or "")
    assert step.status is RUNNING
    # Retrying finds the join as unreachable as before.
    run.signal(stuck.id)
    assert run.one("j", INCIDENT).incident is IncidentKind.JOIN_UNREACHABLE


def test_threshold_that_can_no_longer_be_met_is_an_incident() -> None:
    definition = define("""
    id: short
    nodes:
      s: {type: start}
      a: {type: wait}
      b: {type: wait, split: first}
      c: {type: wait}
      j: {type: passthrough, join: threshold, threshold: 2}
      e: {type: end}
    flows:
      - {from: s, to: a}
      - {from: s, to: b}
      - {from: a, to: j}
      - {from: b, to: e, when: "skip"}
      - {from: b, to: c}
      - {from: c, to: j}
      - {from: j, to: e}
    """)
    run = Driver(definition, {"skip": True})
    run.start()
    run.signal(run.one("a").id)
    assert run.one("j", WAITING)
    run.signal(run.one("b").id)
    assert run.one("j", INCIDENT).incident is IncidentKind.JOIN_UNREACHABLE


def test_wait_all_consumes_the_oldest_token_of_each_flow() -> None:
    definition = define("""
    id: twice
    nodes:
      s: {type: start}
      a: {type: wait}
      b: {type: wait}
      j: {type: gateway, gateway: parallel}
      w: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: a}
      - {from: s, to: a}
      - {from: s, to: b}
      - {from: a, to: j}
      - {from: b, to: j}
      - {from: j, to: w}
      - {from: w, to: e}
    """)
    run = Driver(definition)
    run.start()
    first, second = run.at("a")
    run.signal(first.id)
    run.signal(second.id)
    older, newer = run.at("j", WAITING)
    step = run.signal(run.one("b").id)
    fired = next(e for e in step.events if e.kind is EventKind.JOIN_FIRED)
    assert older.id in fired.tokens
    assert newer.id not in fired.tokens
    # The newer token's partner can never come (b is spent): it is an incident, not a silent wait.
    stuck = run.one("j", INCIDENT)
    assert (stuck.incident, stuck.arrived_by) == (IncidentKind.JOIN_UNREACHABLE, newer.arrived_by)
    assert run.one("w", PARKED).arrived_by == 5
    assert fired.token_id not in run.tokens  # the join's own token moved straight on


INCLUSIVE = """
id: inclusive
nodes:
  s: {type: start}
  fork: {type: gateway, gateway: inclusive}
  a: {type: wait}
  b: {type: wait}
  c: {type: wait}
  j: {type: gateway, gateway: inclusive}
  done: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: fork}
  - {from: fork, to: a, when: "pick_a"}
  - {from: fork, to: b, when: "pick_b"}
  - {from: fork, to: c, when: "pick_c"}
  - {from: a, to: j}
  - {from: b, to: j}
  - {from: c, to: j}
  - {from: j, to: done}
  - {from: done, to: e}
"""


def test_inclusive_join_waits_only_for_branches_that_can_still_arrive() -> None:
    run = Driver(define(INCLUSIVE), {"pick_a": True, "pick_b": True, "pick_c": False})
    run.start()
    assert [t.node_id for t in run.live] == ["a", "b"]
    run.signal(run.one("a").id)
    assert run.at("done") == []  # b can still arrive
    step = run.signal(run.one("b").id)
    assert run.one("done", PARKED)
    fired = next(e for e in step.events if e.kind is EventKind.JOIN_FIRED)
    assert len(fired.tokens) == 2


def test_inclusive_join_with_a_single_branch_fires_at_once() -> None:
    run = Driver(define(INCLUSIVE), {"pick_a": False, "pick_b": False, "pick_c": True})
    run.start()
    run.signal(run.one("c").id)
    assert run.one("done", PARKED)


def test_inclusive_join_fires_when_the_other_branch_ends_elsewhere() -> None:
    definition = define("""
    id: inclusive_escape
    nodes:
      s: {type: start}
      a: {type: wait}
      b: {type: wait}
      route: {type: gateway, gateway: exclusive}
      j: {type: passthrough, join: inclusive}
      done: {type: wait}
      e: {type: end}
      elsewhere: {type: end}
    flows:
      - {from: s, to: a}
      - {from: s, to: b}
      - {from: a, to: j}
      - {from: b, to: route}
      - {from: route, to: j, when: "go_on"}
      - {from: route, to: elsewhere}
      - {from: j, to: done}
      - {from: done, to: e}
    """)
    run = Driver(definition, {"go_on": False})
    run.start()
    run.signal(run.one("a").id)
    assert run.one("j", WAITING)
    run.signal(run.one("b").id)
    assert run.one("done", PARKED)
    assert run.at("j") == []


# -- incidents and retries --------------------------------------------------------------------------


def test_no_flow_holds_is_an_incident_and_the_rest_carries_on() -> None:
    definition = define("""
    id: partial
    nodes:
      s: {type: start}
      g: {type: gateway}
      other: {type: wait}
      ok: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: g}
      - {from: s, to: other}
      - {from: g, to: ok, when: "ready"}
      - {from: other, to: e}
      - {from: ok, to: e}
    """)
    run = Driver(definition, {"ready": False})
    step = run.start()
    incident = run.one("g", INCIDENT)
    assert "no outgoing flow of node 'g'" in (incident.reason or "")
    assert incident.incident is IncidentKind.NO_FLOW_MATCHED
    assert run.one("other", PARKED)
    assert step.status is RUNNING
    assert EventKind.INCIDENT in run.kinds(step)

    run.variables["ready"] = True
    step = run.signal(incident.id)
    assert step.consumed == (incident.id,)
    assert step.events[0].kind is EventKind.RETRIED
    assert run.one("ok", PARKED)


@pytest.mark.parametrize(
    ("condition", "variables", "fragment"),
    [
        ("missing > 1", {}, "missing"),
        ("amount", {"amount": 3}, "not a boolean"),
        ("int(one) / int(zero) > 0", {"one": 1, "zero": 0}, "division by zero"),
    ],
)
def test_condition_failures_are_incidents(
    condition: str, variables: dict[str, object], fragment: str
) -> None:
    definition = define(f"""
    id: failing
    nodes: {{s: {{type: start}}, w: {{type: wait}}, e: {{type: end}}}}
    flows: [{{from: s, to: w}}, {{from: w, to: e, when: "{condition}"}}, {{from: w, to: e, when: "true"}}]
    """)
    run = Driver(definition, variables)
    run.start()
    run.signal(run.one("w").id)
    incident = run.one("w", INCIDENT)
    assert fragment in (incident.reason or "")
    assert incident.incident is IncidentKind.CONDITION_FAILED
    assert incident.retry is Retry.ROUTE_OUT
    # Retrying routes out of the wait node again; it does not park there again.
    run.variables.update({"missing": 5, "amount": True, "zero": 1})
    assert run.signal(incident.id).status is COMPLETED


def test_timer_route_failure_keeps_due_time_and_retry_routes_out() -> None:
    definition = define("""
    id: timer_route
    nodes: {s: {type: start}, t: {type: timer, after: PT1H}, e: {type: end}}
    flows: [{from: s, to: t}, {from: t, to: e, when: "go"}]
    """)
    run = Driver(definition, {"go": False})
    run.start()
    run.fire(run.one("t").id, now=NOW + HOUR)
    incident = run.one("t", INCIDENT)
    assert incident.due_at == NOW + HOUR
    run.variables["go"] = True
    assert run.signal(incident.id).status is COMPLETED


LOOP = """
id: loop
nodes:
  s: {type: start}
  p: {type: passthrough}
  q: {type: passthrough, split: first}
  w: {type: wait}
  e: {type: end}
flows:
  - {from: s, to: p}
  - {from: p, to: q}
  - {from: q, to: p, when: "spin"}
  - {from: q, to: w}
  - {from: w, to: e}
"""


def test_step_limit_turns_an_automatic_cycle_into_an_incident() -> None:
    run = Driver(define(LOOP), {"spin": True}, step_limit=50)
    step = run.start()
    incident = run.live[0]
    assert len(run.live) == 1
    assert incident.status is INCIDENT
    assert incident.incident is IncidentKind.STEP_LIMIT
    assert step.status is RUNNING
    routed = [e for e in step.events if e.kind is EventKind.ROUTED]
    assert len(routed) == 51  # the start, then 50 automatic moves

    step = run.signal(incident.id)  # a fresh budget, still spinning
    assert run.live[0].incident is IncidentKind.STEP_LIMIT
    run.variables["spin"] = False
    run.signal(run.live[0].id)
    assert run.one("w", PARKED)


def test_step_limit_keeps_every_token_of_a_multiplying_cycle() -> None:
    definition = define("""
    id: bloom
    nodes:
      s: {type: start}
      p: {type: passthrough}
      w: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: p}
      - {from: p, to: p, when: "grow"}
      - {from: p, to: p, when: "grow"}
      - {from: p, to: w}
      - {from: w, to: e}
    """)
    run = Driver(definition, {"grow": True}, step_limit=20)
    run.start()
    incidents = [t for t in run.live if t.status is INCIDENT]
    assert incidents
    assert all(t.incident is IncidentKind.STEP_LIMIT for t in incidents)
    parked = len(run.at("w", PARKED))
    run.variables["grow"] = False
    for token in incidents:
        run.signal(token.id)
    assert all(t.status is PARKED and t.node_id == "w" for t in run.live)
    assert len(run.live) == parked + len(incidents)


def test_step_limit_retry_at_a_join_waits_there_again() -> None:
    definition = define("""
    id: join_limit
    nodes:
      s: {type: start}
      a: {type: passthrough}
      b: {type: wait}
      j: {type: gateway, gateway: parallel}
      w: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: a}
      - {from: s, to: b}
      - {from: a, to: j}
      - {from: b, to: j}
      - {from: j, to: w}
      - {from: w, to: e}
    """)
    run = Driver(definition, step_limit=2)
    run.start()
    stuck = run.one("j", INCIDENT)
    assert stuck.arrived_by == 2
    run.signal(stuck.id)
    assert run.one("j", WAITING).arrived_by == 2
    run.signal(run.one("b").id)
    assert run.one("w", PARKED)


def test_inclusive_join_waits_for_a_token_stopped_by_the_step_limit() -> None:
    run = Driver(define(INCLUSIVE), {"pick_a": True, "pick_b": True, "pick_c": False})
    run.start()
    run.signal(run.one("a").id)
    run.step_limit = 0
    run.signal(run.one("b").id)
    stuck = run.one("j", INCIDENT)
    assert stuck.incident is IncidentKind.STEP_LIMIT
    assert run.one("j", WAITING)
    assert run.at("done") == []
    run.step_limit = engine.STEP_LIMIT
    run.signal(stuck.id)
    assert run.one("done", PARKED)


# -- signal errors ----------------------------------------------------------------------------------


def test_signal_refuses_what_is_not_parked() -> None:
    run = Driver(load_file(EXAMPLES / "parallel_review.yaml"))
    run.start()
    with pytest.raises(TokenNotParked):
        run.signal("no-such-token")
    run.signal(run.one("legal").id)
    with pytest.raises(TokenNotParked):
        run.signal(run.one("all_signed", WAITING).id)
    stray = Token("stray", "no_such_node", PARKED, 99)
    with pytest.raises(TokenNotParked):
        engine.signal(run.definition, [stray], {}, "stray", now=NOW, new_id=run.new_id)
    on_passthrough = Token("odd", "fork", PARKED, 99)
    with pytest.raises(TokenNotParked):
        engine.signal(run.definition, [on_passthrough], {}, "odd", now=NOW, new_id=run.new_id)


def test_a_consumed_token_cannot_be_signalled_again() -> None:
    run = Driver(load_file(EXAMPLES / "three_step.yaml"))
    run.start()
    task = run.one("task")
    before = list(run.tokens.values())
    run.signal(task.id)
    with pytest.raises(TokenNotParked):
        engine.signal(run.definition, [], {}, task.id, now=NOW, new_id=run.new_id)
    assert before == [task]


def test_cycle_through_a_wait_node() -> None:
    definition = define("""
    id: revise
    nodes:
      s: {type: start}
      review: {type: wait}
      decide: {type: gateway, gateway: exclusive}
      revise: {type: wait}
      e: {type: end}
    flows:
      - {from: s, to: review}
      - {from: review, to: decide}
      - {from: decide, to: e, when: "approved"}
      - {from: decide, to: revise}
      - {from: revise, to: review}
    """)
    run = Driver(definition, {"approved": False})
    run.start()
    for _ in range(3):
        run.signal(run.one("review").id)
        run.signal(run.one("revise").id)
    run.variables["approved"] = True
    assert run.signal(run.one("review").id).status is COMPLETED
