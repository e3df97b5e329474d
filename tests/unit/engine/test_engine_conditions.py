"""CEL conditions and `until` times: compiled once, failures reported rather than raised uncaught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from orchestra_server.engine.conditions import (
    MAX_VARIABLE_DEPTH,
    ExpressionError,
    compile_expression,
    evaluate_condition,
    evaluate_time,
    parse_rfc3339,
)


def test_compiling_is_cached_by_text() -> None:
    assert compile_expression("a > 1") is compile_expression("a > 1")
    assert compile_expression("a > 1").names == ("a",)


def test_compile_failures_are_recorded_not_raised() -> None:
    broken = compile_expression("a >")
    assert broken.error
    with pytest.raises(ExpressionError, match="does not compile"):
        evaluate_condition(broken, {"a": 1})


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        ("amount > 1000", {"amount": 1000}, False),
        ("amount > 1000", {"amount": 1000.0}, False),
        ("amount > 1000", {"amount": 1000.5}, True),
        ("amount == 1000", {"amount": 1000.0}, True),
        ("amount == 1000.0", {"amount": 1000}, True),
        ("amount < limit", {"amount": 3, "limit": 3.5}, True),
        ("order.lines[0].qty >= 2", {"order": {"lines": [{"qty": 2.0}]}}, True),
        ("has(order.rush) && order.rush", {"order": {}}, False),
        ("'vip' in tags", {"tags": ["vip"]}, True),
    ],
)
def test_conditions(expression: str, variables: dict[str, Any], expected: bool) -> None:
    assert evaluate_condition(compile_expression(expression), variables) is expected


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("expression", "variables", "fragment"),
    [
        ("missing > 1", {}, "Undefined variable"),
        # Numbers are doubles in conditions (see the number model).
        ("amount", {"amount": 1}, "gave a double, not a boolean"),
        ("name", {"name": "x"}, "gave a string, not a boolean"),
        ("value", {"value": None}, "gave null, not a boolean"),
        ("int(a) / int(n) > 0", {"a": 1, "n": 0}, "division by zero"),
        ("items[3]", {"items": []}, "index out of bounds"),
        ("deep == 1", {"deep": nested(MAX_VARIABLE_DEPTH + 1)}, "nested at most"),
        ("odd == 1", {"odd": object()}, "not a JSON value"),
        ("odd == 1", {"odd": {1: 2}}, "not a JSON value"),
    ],
)
def test_evaluation_failures_raise_expression_error(
    expression: str, variables: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ExpressionError, match=fragment):
        evaluate_condition(compile_expression(expression), variables)


def test_only_referenced_variables_are_checked() -> None:
    assert evaluate_condition(compile_expression("ok"), {"ok": True, "junk": object()})


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        ("due", {"due": "2030-01-01T10:00:00Z"}, datetime(2030, 1, 1, 10, tzinfo=UTC)),
        ("due", {"due": "2030-01-01t10:00:00.123456789-02:00"}, datetime(2030, 1, 1, 12, 0, 0, 123456, UTC)),
        ("timestamp(due)", {"due": "2030-01-01T10:00:00+01:00"}, datetime(2030, 1, 1, 9, tzinfo=UTC)),
        ("timestamp('2030-01-01T00:00:00Z') + duration('90m')", {}, datetime(2030, 1, 1, 1, 30, tzinfo=UTC)),
    ],
)
def test_until_times(expression: str, variables: dict[str, Any], expected: datetime) -> None:
    moment = evaluate_time(compile_expression(expression), variables)
    assert moment == expected
    assert moment.tzinfo is UTC


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"due": "2030-01-01T10:00:00"}, "not an RFC 3339 timestamp"),
        ({"due": "2030-01-01"}, "not an RFC 3339 timestamp"),
        ({"due": "2030-13-01T10:00:00Z"}, "not an RFC 3339 timestamp"),
        ({"due": 1_700_000_000}, "gave an int, not a timestamp"),
        ({"due": True}, "gave a bool, not a timestamp"),
        ({}, "Undefined variable"),
    ],
)
def test_bad_until_times(variables: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment):
        evaluate_time(compile_expression("due"), variables)


def test_rfc3339_parsing_is_strict() -> None:
    assert parse_rfc3339("2030-01-01T00:00:00+05:30") == datetime(
        2030, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    for text in (
        "2030-01-01T00:00Z",
        " 2030-01-01T00:00:00Z",
        "2030-01-01T00:00:00+0530",
        "2030-01-01T24:00:00Z",
    ):
        assert parse_rfc3339(text) is None
