"""Reading definition text: hostile documents end in one clean problem naming the source, and
equivalent documents have one canonical form."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from orchestra_server.engine import document
from orchestra_server.engine.definition import canonical_content, content_hash, load, to_data
from orchestra_server.engine.document import MAX_DEPTH, MAX_DOCUMENT_BYTES, read_document
from orchestra_server.errors import DefinitionInvalid

SOURCE = "hostile.yaml"

EXCLUSIVE = """\
# An expense check, written one way.
id: check
nodes:
  submit: {type: start}
  route: {type: gateway, gateway: exclusive}   # the preset
  big: {type: wait}
  done: {type: end}
flows:
  - {from: submit, to: route}
  - {from: route, to: big, when: "amount > 1000"}
  - {from: route, to: done}
  - {from: big, to: done}
"""

# The same definition: no comments, other key order, the preset spelled out, JSON.
EXPANDED = json.dumps(
    {
        "flows": [
            {"to": "route", "from": "submit"},
            {"when": "amount > 1000", "to": "big", "from": "route"},
            {"to": "done", "from": "route"},
            {"to": "done", "from": "big"},
        ],
        "nodes": {
            "done": {"type": "end"},
            "big": {"type": "wait"},
            "route": {"split": "first", "join": "immediate", "type": "gateway"},
            "submit": {"type": "start"},
        },
        "id": "check",
    },
    indent=1,
)


def problems(content: bytes | str) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        load(content, source=SOURCE)
    found = caught.value.problems
    assert found
    assert all(problem.startswith(f"{SOURCE}: ") for problem in found), found
    return found


# -- one canonical form -----------------------------------------------------------------------------


def test_comments_key_order_and_a_preset_against_its_expansion_are_one_version() -> None:
    written = load(EXCLUSIVE, source="a.yaml")
    expanded = load(EXPANDED.encode(), source="b.json")
    assert written == expanded
    assert canonical_content(written) == canonical_content(expanded)
    assert content_hash(written) == content_hash(expanded)
    assert json.loads(canonical_content(written)) == to_data(written)


def test_a_real_change_is_a_new_version() -> None:
    written = load(EXCLUSIVE, source="a.yaml")
    for changed in (
        EXCLUSIVE.replace("amount > 1000", "amount > 999"),
        EXCLUSIVE.replace("{type: wait}", "{type: wait, label: Big}"),
        EXCLUSIVE.replace("  - {from: route, to: done}", "  - {from: route, to: done, default: true}"),
    ):
        assert content_hash(load(changed, source="a.yaml")) != content_hash(written)


# -- hostile documents ------------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_deep_nesting_is_refused_before_it_recurses(opening: str) -> None:
    if opening == "- ":
        # Block nesting grows quadratically in size; 500 levels is far past the bound already.
        text = "".join("  " * level + "-\n" for level in range(500))
    else:
        text = opening * 5000 + "x" + ("]" if opening == "[" else "}") * 5000
    found = problems(text)
    assert found == [found[0]]
    assert f"nested deeper than {MAX_DEPTH} levels" in found[0]


def test_nesting_up_to_the_bound_reads() -> None:
    assert read_document("[" * MAX_DEPTH + "]" * MAX_DEPTH, source=SOURCE) is not None


def test_too_many_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real bound (100,000) takes seconds to reach; the mechanism is the same at any bound.
    monkeypatch.setattr(document, "MAX_VALUES", 1000)
    assert len(read_document("[" + "1," * 998 + "1]", source=SOURCE)) == 999
    found = problems("[" + "1," * 1999 + "1]")
    assert found == [f"{SOURCE}: not valid YAML or JSON: line 1 column 2000: more than 1000 values"]


def test_the_largest_valid_definition_is_within_the_value_bound() -> None:
    nodes = {"s": {"type": "start"}, "e": {"type": "end"}}
    nodes |= {
        f"n{i}": {"type": "wait", "label": "A step", "timeout": {"after": "P1D", "to": "e"}}
        for i in range(998)
    }
    flows = [{"from": "s", "to": "n0"}] + [
        {"from": f"n{i % 998}", "to": f"n{(i + 1) % 998}", "when": f"step == {i}"} for i in range(4998)
    ]
    flows.append({"from": "n997", "to": "e"})
    text = json.dumps({"id": "largest", "label": "Largest", "nodes": nodes, "flows": flows})
    assert len(text) < MAX_DOCUMENT_BYTES
    definition = load(text, source=SOURCE)
    assert (len(definition.nodes), len([f for f in definition.flows if not f.timeout])) == (1000, 5000)


def test_a_huge_document_is_refused_by_size() -> None:
    text = "id: x\n" + "# padding\n" * (MAX_DOCUMENT_BYTES // 10 + 1)
    assert problems(text.encode()) == [f"{SOURCE}: larger than {MAX_DOCUMENT_BYTES} bytes"]
    assert problems(text) == [f"{SOURCE}: larger than {MAX_DOCUMENT_BYTES} characters"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe\x00\x01garbage\x80", "not UTF-8 text (byte 0)"),
        (b"id: caf\xe9\n", "not UTF-8 text (byte 7)"),
        (bytes(range(256)) * 8, "not UTF-8"),
        (b"id: x\x00y\n", "character #x0000 at position 5 is not allowed"),
        (b"\x1b[31mred", "is not allowed"),
        (b"id: [unclosed", "line 1 column 14"),
        (b"a: 1\n---\nb: 2\n", "another document"),
        (b"x: !!python/object/apply:os.system [echo]", "could not determine a constructor"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"", "must be a mapping"),
        (b"\t\t\t", "not valid YAML or JSON"),
    ],
)
def test_junk_gets_one_clean_problem(content: bytes, fragment: str) -> None:
    found = problems(content)
    assert any(fragment in problem for problem in found), found
    assert max(len(problem) for problem in found) < 400


def test_a_billion_laughs_is_refused_at_the_first_alias() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    started = time.monotonic()
    found = problems("\n".join(lines))
    assert time.monotonic() - started < 2
    assert found == [
        f"{SOURCE}: not valid YAML or JSON: line 2 column 10: aliases (*name) are not allowed in a definition"
    ]


def test_an_anchor_without_an_alias_is_harmless() -> None:
    assert read_document("a: &first 1\nb: 2\n", source=SOURCE) == {"a": 1, "b": 2}


# -- repeated keys ----------------------------------------------------------------------------------


def test_a_node_declared_twice_names_the_key_and_both_lines() -> None:
    text = textwrap.dedent(
        """\
        id: twice
        nodes:
          s: {type: start}
          task: {type: wait}
          e: {type: end}
          task: {type: passthrough}
        flows:
          - {from: s, to: task}
          - {from: task, to: e}
        """
    )
    assert problems(text) == [f"{SOURCE}: duplicate key 'task' at line 6 (first at line 4)"]


def test_two_flows_lists_are_refused() -> None:
    text = textwrap.dedent(
        """\
        id: twice
        nodes: {s: {type: start}, e: {type: end}}
        flows:
          - {from: s, to: e}
        label: Twice
        flows:
          - {from: s, to: e, when: "x"}
        """
    )
    assert problems(text) == [f"{SOURCE}: duplicate key 'flows' at line 6 (first at line 3)"]


def test_every_repeated_key_is_named_at_every_depth() -> None:
    text = "id: a\nid: b\nnodes:\n  s: {type: start, type: end}\nflows: []\n"
    assert problems(text) == [
        f"{SOURCE}: duplicate key 'id' at line 2 (first at line 1)",
        f"{SOURCE}: duplicate key 'type' at line 4 column 20 (first at line 4 column 7)",
    ]


def test_json_goes_through_the_same_check() -> None:
    text = '{"id": "a",\n "nodes": {"s": {"type": "start"}},\n "nodes": {},\n "flows": []}'
    assert problems(text.encode()) == [f"{SOURCE}: duplicate key 'nodes' at line 3 (first at line 2)"]
    one_line = '{"id": "a", "id": "b"}'
    assert problems(one_line) == [
        f"{SOURCE}: duplicate key 'id' at line 1 column 13 (first at line 1 column 2)"
    ]


def test_keys_equal_as_values_are_repeats() -> None:
    # YAML reads 1 and 0x1 as the same integer key: the second would silently replace the first.
    assert problems("1: a\n0x1: b\n") == [f"{SOURCE}: duplicate key '1' at line 2 (first at line 1)"]


def test_the_same_key_in_different_mappings_is_fine() -> None:
    data = read_document("- {from: a, to: b}\n- {from: a, to: b}\n", source=SOURCE)
    assert data == [{"from": "a", "to": "b"}, {"from": "a", "to": "b"}]
