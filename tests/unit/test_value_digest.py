"""What a search by variable value counts as equal: the same JSON value, whatever its spelling."""

from __future__ import annotations

import pytest

from orchestra_server.storage.repository import value_digest


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("1", "1.0"),
        ("-0.0", "0"),
        ('{"a":1,"b":[2.0,{"c":null}]}', '{"b":[2,{"c":null}],"a":1.0}'),
        ('"caf\\u00e9"', '"café"'),
        ("1e3", "1000"),
    ],
)
def test_the_same_value_has_one_digest(one: str, other: str) -> None:
    assert value_digest(one) == value_digest(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("true", "1"),
        ("false", "0"),
        ("null", '"null"'),
        ('"1"', "1"),
        ("[1,2]", "[2,1]"),
        ("1.5", "1"),
        ('{"a":1}', '{"a":1,"b":null}'),
    ],
)
def test_different_values_have_different_digests(one: str, other: str) -> None:
    assert value_digest(one) != value_digest(other)
