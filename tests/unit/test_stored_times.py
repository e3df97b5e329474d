"""Stored times read back as aware UTC datetimes, whatever form the driver hands them in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra_server.storage.statements import read_time

_zone = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-29 06:40:00.123456", datetime(2026, 11, 29, 6, 40, 0, 123456, tzinfo=UTC)),
        ("2026-11-29 06:40:00", datetime(2026, 11, 29, 6, 40, tzinfo=UTC)),
        # Text with its own offset is converted, not reinterpreted.
        ("2026-11-29 08:40:00+02:00", datetime(2026, 11, 29, 6, 40, tzinfo=UTC)),
        (datetime(2026, 11, 29, 6, 40), datetime(2026, 11, 29, 6, 40, tzinfo=UTC)),
        (datetime(2026, 11, 29, 8, 40, tzinfo=_zone), datetime(2026, 11, 29, 6, 40, tzinfo=UTC)),
        (None, None),
    ],
)
def test_forms(stored: object, expected: datetime | None) -> None:
    found = read_time(stored)
    assert found == expected
    if found is not None:
        assert found.tzinfo is UTC


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31)))
def test_naive_text_round_trip(moment: datetime) -> None:
    # The text SQLite keeps (statements.bind_time) reads back as the same instant.
    text = moment.isoformat(sep=" ", timespec="microseconds")
    assert read_time(text) == moment.replace(tzinfo=UTC)
