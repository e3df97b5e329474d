"""The published value limits: depth defined exactly, integers within 2^53, the instance total."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.service import limits
from orchestra_server.wire.json_text import dump_json

LEAVES: list[Any] = [1, "s", None, True, [], {}]


def nested(depth: int, leaf: Any) -> Any:
    """`leaf` inside depth - 1 containers (lists and objects by turns)."""
    value = leaf
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("leaf", LEAVES, ids=repr)
def test_depth_counts_scalars_and_empty_containers_alike(leaf: Any) -> None:
    assert limits.json_depth(leaf) == 1
    assert limits.json_depth([leaf]) == 2
    assert limits.json_depth({"a": 1, "b": [leaf]}) == 3
    for depth in (2, 7, limits.MAX_JSON_DEPTH):
        assert limits.json_depth(nested(depth, leaf)) == depth


@pytest.mark.parametrize("leaf", LEAVES, ids=repr)
def test_depth_limit_is_exact(leaf: Any) -> None:
    at_limit = nested(limits.MAX_JSON_DEPTH, leaf)
    assert json.loads(limits.encode_value("v", at_limit)) == at_limit
    for depth in (limits.MAX_JSON_DEPTH + 1, limits.MAX_JSON_DEPTH + 2, 100, 10_000):
        with pytest.raises(errors.LimitExceeded, match="variable v is nested deeper than 32 levels"):
            limits.encode_value("v", nested(depth, leaf))


def test_depth_of_a_wide_value_is_its_deepest_branch() -> None:
    wide = [nested(limits.MAX_JSON_DEPTH - 1, 0) for _ in range(50)] + [1, [], {}]
    assert limits.json_depth(wide) == limits.MAX_JSON_DEPTH
    limits.encode_value("v", wide)
    with pytest.raises(errors.LimitExceeded):
        limits.encode_value("v", [*wide, nested(limits.MAX_JSON_DEPTH, [])])


EXACT = 2**53 - 1


@pytest.mark.parametrize(
    "number",
    [0, 1, -1, EXACT, -EXACT, float(EXACT), 0.5, -2.5, 1e-300, 5e-324, 1.5e15],
)
def test_numbers_a_double_carries_exactly_are_accepted(number: float) -> None:
    for value in (number, [number], {"a": {"b": [1, number]}}):
        assert json.loads(limits.encode_value("n", value)) == value


@pytest.mark.parametrize(
    "number", [EXACT + 1, -(EXACT + 1), 2**53 + 1, 10**30, float(2**53), -1e300, 1.7e308]
)
def test_integers_beyond_2_to_the_53_are_refused_at_any_depth(number: float) -> None:
    for value in (number, [1, number], {"a": {"b": [number]}}, nested(limits.MAX_JSON_DEPTH, number)):
        with pytest.raises(
            errors.LimitExceeded, match=r"variable amount holds an integer beyond \+/-9007199254740991"
        ):
            limits.encode_value("amount", value)
    with pytest.raises(errors.LimitExceeded, match="variable amount"):
        limits.encode_variables({"ok": 1, "amount": {"x": number}})


def test_booleans_are_not_numbers() -> None:
    assert limits.encode_value("b", [True, False]) == "[true,false]"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")], {1, 2}, "\ud800"], ids=repr)
def test_what_is_not_json_is_refused_naming_the_variable(value: Any) -> None:
    with pytest.raises(errors.InvalidArgument, match="variable v is not JSON"):
        limits.encode_value("v", value)


def test_one_value_is_limited_in_utf8_bytes() -> None:
    at_limit = "é" * ((limits.MAX_VARIABLE_BYTES - 2) // 2)
    assert len(dump_json(at_limit).encode()) == limits.MAX_VARIABLE_BYTES
    limits.encode_value("v", at_limit)
    with pytest.raises(errors.LimitExceeded, match="variable v is larger than 1048576 bytes"):
        limits.encode_value("v", at_limit + "x")


def test_start_variables_are_limited_in_utf8_bytes_together() -> None:
    half = "é" * ((limits.MAX_START_VARIABLES_BYTES // 2 - 2) // 2)
    limits.encode_variables({"a": half, "b": half})
    with pytest.raises(errors.LimitExceeded, match="together"):
        limits.encode_variables({"a": half, "b": half + "é"})


@pytest.mark.parametrize(
    "variables",
    [{}, {"a": 1}, {"a": 1, "b": "x"}, {"long_name_" * 12: [1, {"k": None}], "x": "é€😀", "y": []}],
)
def test_instance_total_is_the_compact_json_object(variables: dict[str, Any]) -> None:
    encoded = {name: dump_json(value) for name, value in variables.items()}
    size = sum(len(name) + len(text.encode()) for name, text in encoded.items())
    assert limits.variables_json_bytes(len(encoded), size) == len(dump_json(variables).encode())


def test_instance_total_boundary() -> None:
    total = limits.MAX_INSTANCE_VARIABLES_BYTES
    # Two variables: `{`, `}`, one `,` and `"":` twice around their names and values.
    limits.check_instance_variables(2, total - 9)
    with pytest.raises(errors.LimitExceeded, match="2097152 bytes together"):
        limits.check_instance_variables(2, total - 8)
