"""What deploy refuses beyond the structure: default flow rules, flows never taken, repeated flows,
joins that never fire, and expressions whose type cannot work."""

from __future__ import annotations

import itertools
import re
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_server.engine.definition import parse, to_data
from orchestra_server.engine.expression_types import ANY, Kind, describe, result_kinds
from orchestra_server.engine.model import Definition, EventKind
from orchestra_server.errors import DefinitionInvalid
from tests.unit.engine.support import Driver, define
from tests.unit.engine.test_engine_properties import Shape, graphs
from tests.unit.engine.test_engine_properties import _drive as drive

SOURCE = "checks.yaml"


def strict(text: str) -> Definition:
    return define(text, source=SOURCE, strict=True)


def refused(text: str, *, when_stored: bool = True) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        strict(text)
    found = caught.value.problems
    assert all(problem.startswith(f"{SOURCE}: ") for problem in found), found
    if when_stored:
        # A stored definition is read without these refusals, so instances already on it keep running.
        define(text, source=SOURCE, strict=False)
    return found


def route(split: str, *flows: str) -> str:
    """A start, a routing node `r` with the given split and flows, and an end for each target."""
    ends = sorted(set(re.findall(r"to: (\w+)", " ".join(flows))))
    lines = [
        "id: routing",
        "nodes:",
        "  s: {type: start}",
        f"  r: {{type: passthrough, split: {split}}}",
        *(f"  {end}: {{type: end}}" for end in ends),
        "flows:",
        "  - {from: s, to: r}",
        *(f"  - {flow}" for flow in flows),
    ]
    return "\n".join(lines) + "\n"


# -- default flows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["first", "all"])
def test_a_default_flow_may_be_listed_anywhere(split: str) -> None:
    definition = strict(
        route(
            split,
            "{from: r, to: a, default: true}",
            '{from: r, to: b, when: "x > 1"}',
            '{from: r, to: c, when: "y"}',
        )
    )
    flows = definition.outgoing["r"]
    assert [flow.default for flow in flows] == [True, False, False]
    assert to_data(definition)["flows"][1] == {"from": "r", "to": "a", "default": True}
    assert parse(to_data(definition), source="again") == definition


def test_default_false_is_no_default() -> None:
    definition = strict(route("first", '{from: r, to: a, when: "x"}', "{from: r, to: b, default: false}"))
    assert not any(flow.default for flow in definition.flows)
    assert "default" not in to_data(definition)["flows"][2]


def test_at_most_one_default_flow() -> None:
    found = refused(
        route(
            "first",
            '{from: r, to: a, when: "x"}',
            "{from: r, to: b, default: true}",
            "{from: r, to: c, default: true}",
        )
    )
    assert f"{SOURCE}: node 'r': 2 default flows (#3, #4); at most one" in found


def test_a_default_flow_has_no_condition() -> None:
    found = refused(
        route("first", '{from: r, to: a, when: "x"}', '{from: r, to: b, default: true, when: "y"}'),
        when_stored=False,
    )
    assert found == [
        f"{SOURCE}: flow #3 (r -> b): a default flow may not have a condition: "
        "it is taken when no other flow is"
    ]


def test_default_must_be_a_boolean() -> None:
    found = refused(
        route("first", '{from: r, to: a, when: "x"}', '{from: r, to: b, default: "yes"}'), when_stored=False
    )
    assert found == [f"{SOURCE}: flow #3 (r -> b): default must be true or false, not 'yes'"]


@pytest.mark.parametrize("split", ["first", "all"])
def test_a_default_beside_a_flow_that_always_holds_is_never_taken(split: str) -> None:
    found = refused(route(split, "{from: r, to: a, default: true}", "{from: r, to: b}"))
    assert found == [
        f"{SOURCE}: flow #2 (r -> a): the default flow is never taken: flow #3 (r -> b) always holds"
    ]


# -- flows never taken ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "always", ["{from: r, to: a}", '{from: r, to: a, when: "true"}', '{from: r, to: a, when: "1 < 2"}']
)
def test_on_a_first_split_flows_after_one_that_always_holds_are_never_taken(always: str) -> None:
    found = refused(route("first", '{from: r, to: c, when: "x"}', always, '{from: r, to: b, when: "y"}'))
    assert found == [
        f"{SOURCE}: flow #4 (r -> b): never taken: flow #3 (r -> a) before it always holds "
        "and split 'first' takes only one flow"
    ]


def test_an_unconditioned_flow_last_on_a_first_split_is_the_usual_otherwise() -> None:
    strict(route("first", '{from: r, to: a, when: "x > 1"}', "{from: r, to: b}"))


def test_on_an_all_split_unconditioned_flows_are_all_taken() -> None:
    strict(route("all", "{from: r, to: a}", "{from: r, to: b}", '{from: r, to: c, when: "x"}'))


@pytest.mark.parametrize("condition", ["false", "1 > 2", "'a' == 'b'", "size([1, 2]) == 3"])
def test_a_condition_that_is_always_false_is_refused(condition: str) -> None:
    found = refused(route("all", "{from: r, to: a}", f'{{from: r, to: b, when: "{condition}"}}'))
    assert found == [f"{SOURCE}: flow #3 (r -> b): condition {condition!r} is always false: never taken"]


def test_a_condition_without_variables_that_always_fails_is_refused() -> None:
    found = refused(route("first", '{from: r, to: a, when: "[1][5] == 1"}', "{from: r, to: b}"))
    assert len(found) == 1
    assert found[0].startswith(f"{SOURCE}: flow #2 (r -> a): when '[1][5] == 1' fails whenever it runs:")


def test_on_a_first_split_a_condition_repeated_is_never_taken() -> None:
    found = refused(
        route(
            "first", '{from: r, to: a, when: "x > 1"}', '{from: r, to: b, when: "x > 1"}', "{from: r, to: c}"
        )
    )
    assert found == [
        f"{SOURCE}: flow #3 (r -> b): never taken: flow #2 (r -> a) before it has the same condition "
        "and split 'first' takes only one flow"
    ]
    strict(
        route("all", '{from: r, to: a, when: "x > 1"}', '{from: r, to: b, when: "x > 1"}', "{from: r, to: c}")
    )


_CONDITIONS = st.sampled_from([None, "x", "y", "true", "false"])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["first", "all"]),
    st.lists(st.tuples(_CONDITIONS, st.booleans()), min_size=1, max_size=5),
)
def test_every_flow_of_an_accepted_definition_can_be_taken(
    split: str, flows: list[tuple[str | None, bool]]
) -> None:
    """Over independent variables, acceptance means each flow is taken under some assignment."""
    listed = []
    for number, (condition, default) in enumerate(flows):
        if default:
            listed.append(f"{{from: r, to: n{number}, default: true}}")
        elif condition is None:
            listed.append(f"{{from: r, to: n{number}}}")
        else:
            listed.append(f'{{from: r, to: n{number}, when: "{condition}"}}')
    try:
        definition = strict(route(split, *listed))
    except DefinitionInvalid:
        return
    taken: set[int] = set()
    for x, y in itertools.product([False, True], repeat=2):
        run = Driver(definition, {"x": x, "y": y})
        step = run.start()
        for event in step.events:
            if event.kind is EventKind.ROUTED and event.node_id == "r":
                taken.update(event.flows)
    assert taken == {flow.index for flow in definition.outgoing["r"]}


# -- repeated flows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["first", "all"])
def test_repeated_flows_name_both(split: str) -> None:
    found = refused(
        route(
            split, '{from: r, to: a, when: "x"}', '{from: r, to: b, when: "y"}', '{from: r, to: a, when: "x"}'
        )
    )
    assert f"{SOURCE}: flow #4 (r -> a): repeats flow #2 (r -> a) (same from, to and condition)" in found


def test_repeated_unconditioned_flows_are_refused() -> None:
    found = refused(route("all", "{from: r, to: a}", "{from: r, to: a}"))
    assert found == [f"{SOURCE}: flow #3 (r -> a): repeats flow #2 (r -> a) (same from, to and condition)"]


def test_flows_to_one_node_under_different_conditions_are_fine() -> None:
    strict(route("all", '{from: r, to: a, when: "x"}', '{from: r, to: a, when: "y"}', "{from: r, to: b}"))


# -- joins that never fire --------------------------------------------------------------------------

EXCLUSIVE_THEN_PARALLEL = """
id: stuck
nodes:
  s: {type: start}
  x: {type: gateway, gateway: exclusive}
  a: {type: wait}
  b: {type: wait}
  j: {type: gateway, gateway: parallel}
  e: {type: end}
flows:
  - {from: s, to: x}
  - {from: x, to: a, when: "left"}
  - {from: x, to: b}
  - {from: a, to: j}
  - {from: b, to: j}
  - {from: j, to: e}
"""


def test_a_parallel_join_after_an_exclusive_split_is_refused() -> None:
    assert refused(EXCLUSIVE_THEN_PARALLEL) == [
        f"{SOURCE}: node 'j': join 'wait_all' never fires: flow #4 (a -> j) and flow #5 (b -> j) are never "
        "both taken (no split 'all' node has separate flows leading to each)"
    ]


def test_a_wait_all_join_after_a_split_first_node_is_refused() -> None:
    text = EXCLUSIVE_THEN_PARALLEL.replace(
        "{type: gateway, gateway: parallel}", "{type: passthrough, join: wait_all}"
    )
    assert "join 'wait_all' never fires" in refused(text)[0]


def test_a_parallel_split_between_makes_it_valid() -> None:
    strict(
        """
        id: fine
        nodes:
          s: {type: start}
          x: {type: gateway, gateway: exclusive}
          fork: {type: gateway, gateway: parallel}
          a: {type: wait}
          b: {type: wait}
          j: {type: gateway, gateway: parallel}
          e: {type: end}
        flows:
          - {from: s, to: x}
          - {from: x, to: fork, when: "go"}
          - {from: x, to: e}
          - {from: fork, to: a}
          - {from: fork, to: b}
          - {from: a, to: j}
          - {from: b, to: j}
          - {from: j, to: e}
        """
    )


def test_an_exclusive_choice_inside_one_parallel_branch_cannot_feed_a_join_twice() -> None:
    found = refused(
        """
        id: half
        nodes:
          s: {type: start}
          fork: {type: gateway, gateway: parallel}
          x: {type: gateway, gateway: exclusive}
          m: {type: passthrough}
          y: {type: wait}
          j: {type: passthrough, join: wait_all}
          e: {type: end}
        flows:
          - {from: s, to: fork}
          - {from: fork, to: x}
          - {from: fork, to: y}
          - {from: x, to: j, when: "c"}
          - {from: x, to: m}
          - {from: m, to: j}
          - {from: y, to: j}
          - {from: j, to: e}
        """
    )
    assert found == [
        f"{SOURCE}: node 'j': join 'wait_all' never fires: flow #4 (x -> j) and flow #6 (m -> j) are never "
        "both taken (no split 'all' node has separate flows leading to each)"
    ]


ROUNDS = """
id: rounds
nodes:
  s: {type: start}
  # Not a parallel gateway: with two incoming flows that would be a join waiting for both.
  fork: {type: passthrough, split: all}
  a: {type: wait}
  b: {type: wait}
  j: {type: gateway, gateway: parallel}
  again: {type: gateway, gateway: exclusive}
  e: {type: end}
flows:
  - {from: s, to: fork}
  - {from: fork, to: a}
  - {from: fork, to: b}
  - {from: a, to: j}
  - {from: b, to: j}
  - {from: j, to: again}
  - {from: again, to: fork, when: "retry"}
  - {from: again, to: e, default: true}
"""


def test_a_parallel_loop_that_joins_each_round_is_valid() -> None:
    strict(ROUNDS)


def test_a_parallel_gateway_entered_twice_is_a_join_that_never_fires() -> None:
    found = refused(ROUNDS.replace("{type: passthrough, split: all}", "{type: gateway, gateway: parallel}"))
    assert found[0].startswith(f"{SOURCE}: node 'fork': join 'wait_all' never fires: flow #1 (s -> fork)")


def test_a_wait_all_join_in_a_loop_without_any_fork_is_refused() -> None:
    found = refused(
        """
        id: circling
        nodes:
          s: {type: start}
          x: {type: passthrough, split: first}
          a: {type: wait}
          b: {type: wait}
          j: {type: passthrough, join: wait_all, split: first}
          e: {type: end}
        flows:
          - {from: s, to: x}
          - {from: x, to: a, when: "odd"}
          - {from: x, to: b}
          - {from: a, to: j}
          - {from: b, to: j}
          - {from: j, to: x, when: "again"}
          - {from: j, to: e}
        """
    )
    assert "node 'j': join 'wait_all' never fires" in found[0]


def test_a_wait_with_a_timeout_cannot_fill_a_join_both_ways() -> None:
    # The timeout replaces the route: one token takes one of them.
    found = refused(
        """
        id: either
        nodes:
          s: {type: start}
          w: {type: wait, timeout: {after: PT1H, to: j}}
          j: {type: passthrough, join: wait_all}
          e: {type: end}
        flows:
          - {from: s, to: w}
          - {from: w, to: j}
          - {from: j, to: e}
        """
    )
    assert "flow #2 (w -> j) and flow #4 (w -> j) are never both taken" in found[0]


def test_a_default_flow_is_no_parallel_branch() -> None:
    found = refused(
        """
        id: defaulted
        nodes:
          s: {type: start}
          x: {type: passthrough}
          a: {type: wait}
          b: {type: wait}
          j: {type: passthrough, join: wait_all}
          e: {type: end}
        flows:
          - {from: s, to: x}
          - {from: x, to: a, when: "left"}
          - {from: x, to: b, default: true}
          - {from: a, to: j}
          - {from: b, to: j}
          - {from: j, to: e}
        """
    )
    assert "node 'j': join 'wait_all' never fires" in found[0]


THRESHOLD = """
id: quorum
nodes:
  s: {type: start}
  fan: {type: passthrough, split: SPLIT}
  a: {type: wait}
  b: {type: wait}
  c: {type: wait}
  q: {type: passthrough, join: threshold, threshold: N}
  e: {type: end}
flows:
  - {from: s, to: fan}
  - {from: fan, to: a, when: "x"}
  - {from: fan, to: b, when: "y"}
  - {from: fan, to: c}
  - {from: a, to: q}
  - {from: b, to: q}
  - {from: c, to: q}
  - {from: q, to: e}
"""


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_a_threshold_after_a_parallel_split_is_valid(threshold: int) -> None:
    strict(THRESHOLD.replace("SPLIT", "all").replace("N}", f"{threshold}}}"))


def test_a_threshold_over_what_can_arrive_together_is_refused() -> None:
    strict(THRESHOLD.replace("SPLIT", "first").replace("N}", "1}"))
    found = refused(THRESHOLD.replace("SPLIT", "first").replace("N}", "2}"))
    assert found == [
        f"{SOURCE}: node 'q': threshold 2 is never reached: at most 1 of its incoming flows can carry tokens "
        "at the same time (only a split 'all' node makes tokens travel together)"
    ]


def test_inclusive_joins_are_never_refused() -> None:
    strict(
        EXCLUSIVE_THEN_PARALLEL.replace(
            "{type: gateway, gateway: parallel}", "{type: gateway, gateway: inclusive}"
        )
    )


# -- expression types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "gives"),
    [
        ("'yes'", "a string"),
        ("amount * 1.1", "a number"),
        ("amount - 1", "a number, a timestamp or a duration"),
        ("1", "a number"),
        ("2.5", "a number"),
        ("[approved]", "a list"),
        ("{'a': approved}", "a map"),
        ("null", "null"),
        ("size(items)", "a number"),
        ("ok ? 'yes' : 'no'", "a string"),
        ("string(amount)", "a string"),
        ("b'x'", "bytes"),
    ],
)
def test_conditions_that_cannot_be_boolean_are_refused(condition: str, gives: str) -> None:
    found = refused(route("first", f'{{from: r, to: a, when: "{condition}"}}', "{from: r, to: b}"))
    assert found == [
        f"{SOURCE}: flow #2 (r -> a): when {condition!r} cannot give a boolean: it gives {gives}"
    ]


@pytest.mark.parametrize(
    "condition",
    [
        "approved",
        "order.approved",
        "flags[0]",
        "amount > 1000 && approved",
        "!rejected",
        "ok ? approved : false",
        "items.exists(i, i.price > 10)",
        "has(order.discount)",
        "name.startsWith('a')",
        "dyn(approved)",
        "(amount + 1) > 2",
        "x in [1, 2]",
    ],
)
def test_conditions_whose_type_depends_on_variables_pass(condition: str) -> None:
    strict(route("first", f'{{from: r, to: a, when: "{condition}"}}', "{from: r, to: b}"))


def timer(until: str) -> str:
    return textwrap.dedent(
        f"""\
        id: timed
        nodes:
          s: {{type: start}}
          t: {{type: timer, until: "{until}"}}
          e: {{type: end}}
        flows:
          - {{from: s, to: t}}
          - {{from: t, to: e}}
        """
    )


@pytest.mark.parametrize(
    ("until", "problem"),
    [
        ("true", "until 'true' cannot give a time (an RFC 3339 string or a timestamp): it gives a boolean"),
        ("3600", "until '3600' cannot give a time (an RFC 3339 string or a timestamp): it gives a number"),
        ("deadline > 3", "cannot give a time (an RFC 3339 string or a timestamp): it gives a boolean"),
        ("duration('1h')", "it gives a duration"),
        ("'tomorrow'", "until \"'tomorrow'\" fails whenever it runs"),
    ],
)
def test_until_expressions_that_cannot_give_a_time_are_refused(until: str, problem: str) -> None:
    found = refused(timer(until))
    assert len(found) == 1
    assert found[0].startswith(f"{SOURCE}: node 't': ")
    assert problem in found[0]


@pytest.mark.parametrize(
    "until",
    [
        "deadline",
        "order.due",
        "'2030-01-01T00:00:00Z'",
        "timestamp(deadline) + duration('1h')",
        "timestamp('2030-01-01T00:00:00Z')",
        "late ? a : b",
    ],
)
def test_until_expressions_that_can_give_a_time_pass(until: str) -> None:
    strict(timer(until))


def test_unreadable_text_is_any_kind() -> None:
    # Nothing is refused on a guess: what the reader cannot follow could be anything.
    assert result_kinds("a ?? b") == ANY
    assert result_kinds("(" * 3000 + "1" + ")" * 3000) == ANY
    assert result_kinds("1 2") == ANY
    assert describe(frozenset({Kind.INT, Kind.STRING})) == "a number or a string"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(Shape()))
def test_generated_graphs_are_accepted_or_refused_never_crashed_on(data: dict[str, Any]) -> None:
    try:
        definition = parse(data, source=SOURCE)
    except DefinitionInvalid as exc:
        problems = exc.problems
    else:
        assert parse(data, source=SOURCE, strict=False) == definition
        assert parse(to_data(definition), source="again") == definition
        return
    assert problems
    assert all(problem.startswith(f"{SOURCE}: ") for problem in problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_join_refused_as_never_firing_never_fires(data: st.DataObject) -> None:
    """The join rules refuse only what cannot happen: driven anyway, such a join never fires."""
    raw = data.draw(graphs(Shape()))
    try:
        parse(raw, source=SOURCE)
    except DefinitionInvalid as exc:
        problems = exc.problems
    else:
        return
    never = {
        match.group(1)
        for problem in problems
        if (
            match := re.search(
                r"node '(\w+)': (?:join 'wait_all' never fires|threshold \d+ is never)", problem
            )
        )
    }
    if not never:
        return
    run = drive(data, parse(raw, source=SOURCE, strict=False))
    fired = {event.node_id for event in run.events if event.kind is EventKind.JOIN_FIRED}
    assert not fired & never, problems
