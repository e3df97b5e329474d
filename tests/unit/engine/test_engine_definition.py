"""Definition files: what validates, how it is represented, and every rejection with its message."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_server.engine import canonical_content, content_hash, parse, to_data
from orchestra_server.engine.definition import load
from orchestra_server.engine.durations import Duration
from orchestra_server.engine.model import Definition, Join, NodeType, Split
from orchestra_server.errors import DefinitionInvalid
from tests.unit.engine.support import load_file

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SOURCE = "examples/x.yaml"


def base() -> dict[str, Any]:
    """A valid definition to break one way at a time."""
    return {
        "id": "sample",
        "label": "Sample",
        "nodes": {
            "submit": {"type": "start"},
            "review": {"type": "wait", "timeout": {"after": "PT48H", "to": "late"}},
            "route": {"type": "gateway", "gateway": "exclusive"},
            "late": {"type": "passthrough"},
            "cool": {"type": "timer", "after": "PT1H"},
            "done": {"type": "end"},
        },
        "flows": [
            {"from": "submit", "to": "review"},
            {"from": "review", "to": "route"},
            {"from": "route", "to": "cool", "when": "amount > 1000"},
            {"from": "route", "to": "done"},
            {"from": "late", "to": "done"},
            {"from": "cool", "to": "done"},
        ],
    }


def problems_of(data: Any) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        parse(data, source=SOURCE)
    assert caught.value.problems
    assert all(problem.startswith(f"{SOURCE}: ") for problem in caught.value.problems)
    return caught.value.problems


# -- what validates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["expense_approval", "parallel_review", "reminder", "three_step"])
def test_examples_validate(name: str) -> None:
    definition = load_file(EXAMPLES / f"{name}.yaml")
    assert definition.id == name
    assert definition.nodes[definition.start_node].type is NodeType.START


def test_parse_builds_nodes_flows_and_the_implicit_timeout_flow() -> None:
    definition = parse(base(), source=SOURCE)
    assert definition.label == "Sample"
    assert definition.start_node == "submit"
    assert [(f.index, f.source, f.target, f.timeout) for f in definition.flows][-2:] == [
        (5, "cool", "done", False),
        (6, "review", "late", True),
    ]
    assert definition.flows[2].when == "amount > 1000"
    route = definition.nodes["route"]
    assert (route.join, route.split) == (Join.IMMEDIATE, Split.FIRST)
    review = definition.nodes["review"]
    assert review.timeout is not None
    assert review.timeout.after == Duration(span=timedelta(hours=48))
    assert definition.nodes["cool"].after == Duration(span=timedelta(hours=1))
    assert [f.index for f in definition.incoming["late"]] == [6]
    assert [f.index for f in definition.outgoing["review"]] == [1, 6]


@pytest.mark.parametrize(
    ("preset", "join", "split"),
    [
        ("exclusive", Join.IMMEDIATE, Split.FIRST),
        ("parallel", Join.WAIT_ALL, Split.ALL),
        ("inclusive", Join.INCLUSIVE, Split.ALL),
    ],
)
def test_gateway_presets(preset: str, join: Join, split: Split) -> None:
    data = base()
    data["nodes"]["route"] = {"type": "gateway", "gateway": preset, "join": join.value, "split": split.value}
    node = parse(data, source=SOURCE).nodes["route"]
    assert (node.join, node.split) == (join, split)


def test_threshold_counts_the_timeout_flow_as_incoming() -> None:
    data = base()
    # A parallel start, so that three tokens can reach `done` together (one by the timeout route).
    data["nodes"]["submit"]["split"] = "all"
    data["flows"] += [{"from": "submit", "to": "cool"}, {"from": "submit", "to": "route"}]
    data["nodes"]["done"] = {"type": "end", "join": "threshold", "threshold": 3}
    data["nodes"]["late"] = {"type": "passthrough", "join": "threshold", "threshold": 1}
    definition = parse(data, source=SOURCE)
    assert definition.nodes["done"].threshold == 3
    assert len(definition.incoming["done"]) == 3


def test_a_timeout_may_lead_back_to_its_own_wait() -> None:
    data = base()
    data["nodes"]["review"]["timeout"]["to"] = "review"
    data["flows"].insert(3, {"from": "route", "to": "late", "when": "overdue"})
    assert parse(data, source=SOURCE).flows[-1].target == "review"


def test_normal_form_round_trips_and_canonical_content_ignores_spelling() -> None:
    definition = parse(base(), source=SOURCE)
    assert parse(to_data(definition), source="again") == definition
    respelled = base()
    respelled["nodes"]["route"] = {"type": "gateway", "split": "first"}
    respelled["nodes"]["cool"]["after"] = "PT60M"
    assert canonical_content(parse(respelled, source=SOURCE)) == canonical_content(definition)
    assert content_hash(parse(respelled, source=SOURCE)) == content_hash(definition)
    changed = base()
    changed["flows"][2]["when"] = "amount > 999"
    assert content_hash(parse(changed, source=SOURCE)) != content_hash(definition)


def test_canonical_content_is_the_normal_form_as_sorted_json() -> None:
    definition = parse(base(), source=SOURCE)
    reordered = dict(reversed(list(base().items())))
    assert canonical_content(parse(reordered, source=SOURCE)) == canonical_content(definition)
    assert json.loads(canonical_content(definition)) == to_data(definition)
    assert len(content_hash(definition)) == 64


def test_load_reads_json() -> None:
    assert load(json.dumps(base()).encode(), source="x.json") == parse(base(), source="x")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"id: [unclosed", "not valid YAML or JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"", "must be a mapping"),
    ],
)
def test_load_rejects_unreadable_content(content: bytes, fragment: str) -> None:
    with pytest.raises(DefinitionInvalid) as caught:
        load(content, source="bad.yaml")
    assert caught.value.problems[0].startswith("bad.yaml: ")
    assert fragment in str(caught.value)


# -- rejections -------------------------------------------------------------------------------------


def test_a_missing_target_names_file_flow_and_node() -> None:
    data = base()
    data["flows"][2]["to"] = "nowhere"
    assert f"{SOURCE}: flow #3 (route -> nowhere): target node 'nowhere' does not exist" in problems_of(data)


def test_every_problem_is_collected() -> None:
    data = base()
    data["extra"] = 1
    data["nodes"]["cool"]["after"] = "1 hour"
    data["flows"][1]["when"] = "amount >"
    data["nodes"]["late"]["label"] = 5
    problems = problems_of(data)
    assert len(problems) == 4, problems


def edit(path: str, value: Any) -> dict[str, Any]:
    """base() with the value at a slash-separated path replaced (None deletes it)."""
    data = base()
    *parents, last = path.split("/")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is None:
        del target[key]
    else:
        target[key] = value
    return data


REJECTIONS: list[tuple[str, dict[str, Any] | Any, str]] = [
    ("not a mapping", ["id", "x"], "a definition must be a mapping"),
    ("unknown top field", {**base(), "version": 2}, "unknown field 'version'"),
    ("missing id", edit("id", None), "the definition id is missing"),
    ("id not a machine name", edit("id", "Expense"), "definition id 'Expense' is not a machine name"),
    ("id too long", edit("id", "a" * 65), "is not a machine name"),
    ("id a number", edit("id", 7), "definition id a int value is not a machine name"),
    ("label not a string", edit("label", ["x"]), "label must be a string"),
    ("nodes missing", edit("nodes", None), "nodes are missing"),
    ("nodes a list", edit("nodes", ["submit"]), "nodes must be a non-empty mapping"),
    ("flows missing", edit("flows", None), "flows are missing"),
    ("flows a mapping", edit("flows", {"a": "b"}), "flows must be a list"),
    ("flows a string", edit("flows", "submit->done"), "flows must be a list"),
    ("bad node id", edit("nodes/Bad-Node", {"type": "end"}), "node id 'Bad-Node' is not a machine name"),
    ("node id starts with digit", edit("nodes/1st", {"type": "end"}), "node id '1st'"),
    ("node a string", edit("nodes/late", "passthrough"), "node 'late': a node must be a mapping"),
    ("unknown node type", edit("nodes/late/type", "script"), "node 'late': type 'script': expected one of"),
    ("missing node type", edit("nodes/late/type", None), "node 'late': type is missing"),
    ("unknown node field", edit("nodes/late/retries", 3), "node 'late': field 'retries' does not belong"),
    ("after on wait", edit("nodes/review/after", "PT1H"), "field 'after' does not belong on a wait node"),
    ("timeout on timer", edit("nodes/cool/timeout", {"after": "PT1H", "to": "done"}), "on a timer node"),
    ("gateway on passthrough", edit("nodes/late/gateway", "exclusive"), "'gateway' does not belong"),
    ("no start", edit("nodes/submit/type", "passthrough"), "there is no start node"),
    ("two starts", edit("nodes/late/type", "start"), "there are 2 start nodes (submit, late)"),
    ("start with incoming", edit("flows/4/to", "submit"), "node 'submit': a start node may have no incoming"),
    ("end with outgoing", edit("flows/5/from", "done"), "node 'done': an end node may have no outgoing"),
    ("dead end", edit("flows/5", {"from": "submit", "to": "done"}), "node 'cool': dead end"),
    ("unreachable", edit("flows/2/to", "done"), "node 'cool': not reachable from the start node 'submit'"),
    ("flow from missing", edit("flows/4/from", "ghost"), "flow #5 (ghost -> done): source node 'ghost'"),
    ("flow to missing", edit("flows/4/to", "ghost"), "flow #5 (late -> ghost): target node 'ghost'"),
    ("flow not a mapping", edit("flows/4", "late->done"), "flow #5: a flow must be a mapping"),
    ("flow missing from", edit("flows/4/from", None), "flow #5 (? -> done): from is missing"),
    ("flow from a number", edit("flows/4/from", 3), "flow #5 (? -> done): from must be a node id"),
    ("flow unknown field", edit("flows/4/label", "x"), "flow #5 (late -> done): unknown field 'label'"),
    (
        "condition syntax",
        edit("flows/2/when", "amount >"),
        "flow #3 (route -> cool): when 'amount >' does not",
    ),
    ("condition not a string", edit("flows/2/when", True), "when must be a CEL expression string"),
    ("condition empty", edit("flows/2/when", " "), "expression is empty"),
    ("condition too long", edit("flows/2/when", "a" + " && a" * 1000), "longer than 4096"),
    ("until syntax", edit("nodes/cool", {"type": "timer", "until": "now("}), "node 'cool': until 'now('"),
    ("timer both", edit("nodes/cool/until", "'2030-01-01T00:00:00Z'"), "exactly one of after"),
    ("timer neither", edit("nodes/cool/after", None), "exactly one of after"),
    ("bad duration", edit("nodes/cool/after", "1h"), "node 'cool': after '1h': not an ISO-8601 duration"),
    ("half a month", edit("nodes/cool/after", "P1.5M"), "years and months must be whole numbers"),
    ("empty duration", edit("nodes/cool/after", "PT"), "not an ISO-8601 duration"),
    ("number duration", edit("nodes/cool/after", 3600), "after must be a duration string"),
    ("huge duration", edit("nodes/cool/after", "P99999D"), "may not exceed 100 years"),
    ("timeout to missing", edit("nodes/review/timeout/to", "ghost"), "timeout target node 'ghost' does not"),
    ("timeout without after", edit("nodes/review/timeout/after", None), "timeout needs after"),
    ("timeout without to", edit("nodes/review/timeout/to", None), "timeout needs to"),
    ("timeout bad after", edit("nodes/review/timeout/after", "soon"), "timeout after 'soon'"),
    ("timeout extra", edit("nodes/review/timeout/then", "x"), "timeout: unknown field 'then'"),
    ("timeout a string", edit("nodes/review/timeout", "PT1H"), "timeout must be a mapping"),
    ("unknown split", edit("nodes/late/split", "some"), "split 'some': expected one of all, first"),
    ("unknown join", edit("nodes/late/join", "any"), "join 'any': expected one of"),
    ("unknown gateway", edit("nodes/route/gateway", "complex"), "gateway 'complex': expected one of"),
    ("contradicting split", edit("nodes/route/split", "all"), "split 'all' contradicts gateway 'exclusive'"),
    ("contradicting join", edit("nodes/route/join", "wait_all"), "join 'wait_all' contradicts gateway"),
    (
        "threshold too high",
        edit("nodes/done", {"type": "end", "join": "threshold", "threshold": 4}),
        "node 'done': threshold 4 is out of range: it must be between 1 and the number of incoming flows (3)",
    ),
    (
        "threshold zero",
        edit("nodes/done", {"type": "end", "join": "threshold", "threshold": 0}),
        "out of range",
    ),
    ("threshold missing", edit("nodes/done", {"type": "end", "join": "threshold"}), "needs a threshold"),
    (
        "threshold a bool",
        edit("nodes/done", {"type": "end", "join": "threshold", "threshold": True}),
        "threshold must be a whole number",
    ),
    ("threshold without join", edit("nodes/done/threshold", 1), "only meaningful with join 'threshold'"),
]


@pytest.mark.parametrize(("data", "fragment"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejections(data: Any, fragment: str) -> None:
    problems = problems_of(data)
    assert any(fragment in problem for problem in problems), problems


def test_problems_are_capped_and_counted() -> None:
    data = base()
    for n in range(80):
        data["nodes"][f"n{n}"] = {"type": "script"}
    problems = problems_of(data)
    assert len(problems) == 51
    assert problems[-1].endswith("more problems")


def test_echoed_input_is_bounded() -> None:
    problems = problems_of(edit("nodes/late/type", "x" * 10_000))
    assert max(len(p) for p in problems) < 300


# -- never crash on garbage -------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "id", "label", "nodes", "flows", "type", "from", "to", "when", "after", "until", "timeout",
        "split", "join", "threshold", "gateway", "start", "end", "wait", "timer", "passthrough",
        "exclusive", "parallel", "inclusive", "all", "first", "wait_all", "a", "b", "PT1H", "P1D",
        "x > 1", "true", "(", "Bad Id",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8), _WORDS
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_WORDS, st.text(max_size=4), st.integers(0, 3)), inner, max_size=5),
    ),
    max_leaves=30,
)


def _check_parse(data: Any) -> None:
    try:
        definition = parse(data, source="fuzz.yaml")
    except DefinitionInvalid as exc:
        problems = exc.problems
    else:
        assert isinstance(definition, Definition)
        assert parse(to_data(definition), source="again") == definition
        return
    assert problems
    assert all(p.startswith("fuzz.yaml: ") for p in problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSONISH)
def test_arbitrary_data_never_crashes_parse(data: Any) -> None:
    _check_parse(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_definitions_never_crash_parse(data: st.DataObject) -> None:
    """Garbage one level at a time into an otherwise valid definition reaches the deeper checks."""
    definition = base()
    for _ in range(data.draw(st.integers(1, 3))):
        target: Any = definition
        while True:
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            if isinstance(target[key], dict | list) and data.draw(st.booleans()):
                target = target[key]
                continue
            target[key] = data.draw(_JSONISH)
            break
    _check_parse(definition)
    _check_parse(yaml.safe_load(yaml.safe_dump(definition)))
