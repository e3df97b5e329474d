"""Property tests: random valid graphs and random signal sequences never lose, duplicate or crash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_server.engine import parse
from orchestra_server.engine.model import Definition, EventKind, InstanceStatus, NodeType, Split, TokenStatus
from orchestra_server.errors import TokenNotParked
from tests.unit.engine.support import Driver

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# One condition names an unset variable, so some evaluations fail; it is drawn rarely.
CONDITIONS = ["a", "b", "!a", "a && b", "a || c", "!c", "b || !c"] * 2 + ["missing_flag"]
VARIABLES = ("a", "b", "c")


@dataclass(frozen=True)
class Shape:
    """What a generated graph may contain."""

    joins: bool = True
    conditions: bool = True
    waits: bool = True
    timeouts: bool = True
    # Flows back to earlier nodes, from wait nodes only unless `automatic_cycles`.
    cycles: bool = True
    automatic_cycles: bool = False


@st.composite
def graphs(draw: st.DrawFn, shape: Shape) -> dict[str, Any]:
    inner_count = draw(st.integers(1, 7))
    end_count = draw(st.integers(1, 2))
    inner = [f"n{i}" for i in range(1, inner_count + 1)]
    ends = [f"e{i}" for i in range(1, end_count + 1)]
    order = ["s", *inner, *ends]
    last_inner = inner_count  # index of the last node that is not an end
    kinds = ["passthrough", "gateway"] + (["wait", "timer"] if shape.waits else [])
    nodes: dict[str, dict[str, Any]] = {"s": {"type": "start"}}
    for name in inner:
        kind = draw(st.sampled_from(kinds))
        nodes[name] = {"type": kind}
        if kind == "timer":
            nodes[name]["after"] = draw(st.sampled_from(["PT1H", "PT30M", "PT0S"]))
    for name in ends:
        nodes[name] = {"type": "end"}

    edges: list[tuple[int, int]] = []
    # A spine from earlier nodes keeps every node reachable.
    for index in range(1, len(order)):
        edges.append((draw(st.integers(0, min(index - 1, last_inner))), index))
    for index in range(last_inner + 1):
        if not any(source == index for source, _ in edges):
            edges.append((index, draw(st.integers(index + 1, len(order) - 1))))
    for _ in range(draw(st.integers(0, 6))):
        source = draw(st.integers(0, last_inner))
        edges.append((source, draw(st.integers(source + 1, len(order) - 1))))
    if shape.cycles:
        looping = [
            i for i in range(1, last_inner + 1) if shape.automatic_cycles or nodes[order[i]]["type"] == "wait"
        ]
        for source in draw(st.lists(st.sampled_from(looping), max_size=3)) if looping else []:
            edges.append((source, draw(st.integers(1, source))))

    flows = []
    for source, target in edges:
        flow: dict[str, Any] = {"from": order[source], "to": order[target]}
        if shape.conditions and draw(st.booleans()):
            flow["when"] = draw(st.sampled_from(CONDITIONS))
        flows.append(flow)

    for name in inner:
        node = nodes[name]
        node["split"] = draw(st.sampled_from(["all", "first"]))
        if shape.timeouts and node["type"] == "wait" and draw(st.booleans()):
            node["timeout"] = {"after": "PT2H", "to": order[draw(st.integers(1, len(order) - 1))]}
    if shape.joins:
        incoming: dict[str, int] = {}
        for flow in flows:
            incoming[flow["to"]] = incoming.get(flow["to"], 0) + 1
        for node in nodes.values():
            if "timeout" in node:
                incoming[node["timeout"]["to"]] = incoming.get(node["timeout"]["to"], 0) + 1
        for name in [*inner, *ends]:
            join = draw(st.sampled_from(["immediate", "wait_all", "inclusive", "threshold"]))
            nodes[name]["join"] = join
            if join == "threshold":
                nodes[name]["threshold"] = draw(st.integers(1, max(1, incoming.get(name, 1))))
    return {"id": "generated", "nodes": nodes, "flows": flows}


def _expected_valid(run: Driver, token_id: str, firing: bool) -> bool:
    token = run.tokens.get(token_id)
    if token is None:
        return False
    if firing:
        return token.status is TokenStatus.PARKED and token.due_at is not None and token.due_at <= run.now
    if token.status is TokenStatus.INCIDENT:
        return True
    kind = run.definition.nodes[token.node_id].type
    return token.status is TokenStatus.PARKED and kind in (NodeType.WAIT, NodeType.TIMER)


def _drive(data: st.DataObject, definition: Definition) -> Driver:
    variables = {name: data.draw(st.booleans()) for name in VARIABLES}
    step_limit = data.draw(st.sampled_from([3, 40, 1000]))
    run = Driver(definition, variables, step_limit=step_limit)
    run.start()
    _never_silently_stuck(run)
    for _ in range(data.draw(st.integers(0, 25))):
        if run.status is InstanceStatus.COMPLETED:
            break
        action = data.draw(st.sampled_from(["signal", "signal", "fire", "fire", "vars", "ghost"]))
        if action == "vars":
            name = data.draw(st.sampled_from(VARIABLES))
            run.variables[name] = not run.variables[name]
            continue
        if action == "ghost":
            token_id = "never-issued"
        else:
            live = run.live
            token_id = live[data.draw(st.integers(0, len(live) - 1))].id
        firing = action == "fire"
        if firing:
            run.now += timedelta(minutes=data.draw(st.sampled_from([0, 30, 60, 120, 600])))
        valid = _expected_valid(run, token_id, firing)
        if valid:
            if firing:
                run.fire(token_id)
            else:
                run.signal(token_id)
        else:
            with pytest.raises(TokenNotParked):
                run.fire(token_id) if firing else run.signal(token_id)
        _never_silently_stuck(run)
    return run


def _never_silently_stuck(run: Driver) -> None:
    """A running instance always has a token someone can act on: parked (signal, timer) or an
    incident (retry). Only waiting tokens and no incident would be a silent forever-wait."""
    if run.status is InstanceStatus.RUNNING:
        assert any(t.status in (TokenStatus.PARKED, TokenStatus.INCIDENT) for t in run.live), run.live
    else:
        assert run.tokens == {}


# Generated graphs are read without the deploy-time refusals (flows never taken, joins never
# fired): the engine must keep its invariants on whatever it may be handed.


@SETTINGS
@given(st.data())
def test_random_dags_keep_their_invariants(data: st.DataObject) -> None:
    definition = parse(data.draw(graphs(Shape(cycles=False))), source="generated.yaml", strict=False)
    _drive(data, definition)


@SETTINGS
@given(st.data())
def test_random_cyclic_graphs_keep_their_invariants(data: st.DataObject) -> None:
    definition = parse(data.draw(graphs(Shape())), source="generated.yaml", strict=False)
    _drive(data, definition)


@SETTINGS
@given(st.data())
def test_automatic_cycles_stop_at_the_step_limit(data: st.DataObject) -> None:
    definition = parse(data.draw(graphs(Shape(automatic_cycles=True))), source="generated.yaml", strict=False)
    _drive(data, definition)


@SETTINGS
@given(st.data())
def test_without_joins_or_conditions_splits_conserve_paths(data: st.DataObject) -> None:
    """Each token stands for the start-to-end paths still ahead of it; ends and live tokens add up."""
    definition = parse(
        data.draw(graphs(Shape(joins=False, conditions=False, timeouts=False, cycles=False))),
        source="generated.yaml",
        strict=False,
    )

    @cache
    def paths(node_id: str) -> int:
        node = definition.nodes[node_id]
        if node.type is NodeType.END:
            return 1
        routes = [flow for flow in definition.outgoing[node_id] if not flow.timeout]
        if node.split is Split.FIRST:
            routes = routes[:1]
        return sum(paths(flow.target) for flow in routes)

    total = paths(definition.start_node)
    run = Driver(definition, step_limit=1_000_000, token_limit=1_000_000)
    run.start()
    for _ in range(200):
        ended = sum(1 for event in run.events if event.kind is EventKind.ENDED)
        assert sum(paths(token.node_id) for token in run.live) + ended == total
        assert all(token.status is TokenStatus.PARKED for token in run.live)
        if run.status is InstanceStatus.COMPLETED:
            break
        live = run.live
        run.signal(live[data.draw(st.integers(0, len(live) - 1))].id)
    assert run.status is InstanceStatus.COMPLETED
    assert sum(1 for event in run.events if event.kind is EventKind.ENDED) == total


@SETTINGS
@given(st.data())
def test_threshold_joins_complete_in_any_arrival_order(data: st.DataObject) -> None:
    """N of M parallel branches, signalled in any order, over one or more rounds of a loop:
    each round fires once, late tokens are absorbed, and the instance completes."""
    branches = data.draw(st.integers(2, 5))
    threshold = data.draw(st.integers(1, branches))
    rounds = data.draw(st.integers(1, 3))
    names = [f"b{i}" for i in range(branches)]
    nodes: dict[str, Any] = {
        "s": {"type": "start"},
        "fork": {"type": "passthrough"},
        "j": {"type": "passthrough", "join": "threshold", "threshold": threshold},
        "review": {"type": "wait"},
        "again": {"type": "gateway", "gateway": "exclusive"},
        "e": {"type": "end"},
    }
    flows: list[dict[str, Any]] = [{"from": "s", "to": "fork"}]
    for name in names:
        nodes[name] = {"type": "wait"}
        flows += [{"from": "fork", "to": name}, {"from": name, "to": "j"}]
    flows += [
        {"from": "j", "to": "review"},
        {"from": "review", "to": "again"},
        {"from": "again", "to": "fork", "when": "more"},
        {"from": "again", "to": "e"},
    ]
    definition = parse({"id": "rounds", "nodes": nodes, "flows": flows}, source="rounds.yaml")
    run = Driver(definition, {"more": False})
    run.start()
    fired = 0
    for _ in range((branches + 1) * rounds):
        if run.status is InstanceStatus.COMPLETED:
            break
        assert all(t.status is not TokenStatus.INCIDENT for t in run.live), run.live
        parked = [t for t in run.live if t.status is TokenStatus.PARKED]
        token = parked[data.draw(st.integers(0, len(parked) - 1))]
        if token.node_id == "review":
            fired += 1
            run.variables["more"] = fired < rounds
        run.signal(token.id)
        _never_silently_stuck(run)
    assert run.status is InstanceStatus.COMPLETED
    assert fired == rounds
    assert sum(1 for e in run.events if e.kind is EventKind.JOIN_FIRED) == rounds
