"""ISO-8601 durations: what parses, the normal form, and calendar arithmetic at month ends and leap days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra_server.engine.durations import (
    MAX_DURATION,
    Duration,
    DurationError,
    format_duration,
    parse_duration,
)


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected", "normal"),
    [
        ("PT1H", Duration(span=timedelta(hours=1)), "PT1H"),
        ("P1DT2H", Duration(span=timedelta(days=1, hours=2)), "P1DT2H"),
        ("PT0.5S", Duration(span=timedelta(milliseconds=500)), "PT0.5S"),
        ("P2W", Duration(span=timedelta(days=14)), "P14D"),
        ("PT90M", Duration(span=timedelta(minutes=90)), "PT1H30M"),
        ("P1.5D", Duration(span=timedelta(hours=36)), "P1DT12H"),
        ("PT0S", Duration(), "PT0S"),
        ("P1M", Duration(months=1), "P1M"),
        ("P1Y", Duration(months=12), "P1Y"),
        ("P12M", Duration(months=12), "P1Y"),
        ("P18M", Duration(months=18), "P1Y6M"),
        ("P1Y2M10DT2H", Duration(months=14, span=timedelta(days=10, hours=2)), "P1Y2M10DT2H"),
        ("P100Y", Duration(months=1200), "P100Y"),
    ],
)
def test_durations_parse_and_write_back(text: str, expected: Duration, normal: str) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == normal
    assert parse_duration(normal) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not an ISO-8601 duration"),
        ("P", "not an ISO-8601 duration"),
        ("PT", "not an ISO-8601 duration"),
        ("P1DT", "not an ISO-8601 duration"),
        ("1H", "not an ISO-8601 duration"),
        ("PT1H ", "not an ISO-8601 duration"),
        ("pt1h", "not an ISO-8601 duration"),
        ("PT-1H", "not an ISO-8601 duration"),
        ("P1M1Y", "not an ISO-8601 duration"),
        ("PT1.0000001S", "precise to the microsecond"),
        ("PT\u0661H", "not an ISO-8601 duration"),
        ("P1H", "not an ISO-8601 duration"),
        ("P1.5M", "whole numbers"),
        ("P0.5Y", "whole numbers"),
        ("P1Y0.5M", "whole numbers"),
        ("P100Y1D", "may not exceed 100 years"),
        ("P101Y", "may not exceed 100 years"),
        ("P1201M", "may not exceed 100 years"),
        ("P99999D", "may not exceed 100 years"),
        ("P999999999999Y", "may not exceed 100 years"),
    ],
)
def test_bad_durations(text: str, fragment: str) -> None:
    with pytest.raises(DurationError, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        # A month after a month end is the next month's last day when it is shorter.
        ("P1M", at(2025, 1, 31), at(2025, 2, 28)),
        ("P1M", at(2024, 1, 31), at(2024, 2, 29)),
        ("P1M", at(2025, 3, 31), at(2025, 4, 30)),
        ("P2M", at(2025, 12, 31), at(2026, 2, 28)),
        ("P1M", at(2025, 2, 28), at(2025, 3, 28)),
        ("P1M", at(2025, 12, 15, 9), at(2026, 1, 15, 9)),
        # A year after a leap day is February 28; four years after, February 29 again.
        ("P1Y", at(2024, 2, 29), at(2025, 2, 28)),
        ("P4Y", at(2024, 2, 29), at(2028, 2, 29)),
        ("P12M", at(2024, 2, 29), at(2025, 2, 28)),
        ("P1Y", at(2023, 3, 1), at(2024, 3, 1)),
        # Months first, then the exact part: a month after Jan 30 is Feb 28, a day later Mar 1.
        ("P1M1D", at(2025, 1, 30), at(2025, 3, 1)),
        ("P1M1D", at(2024, 1, 30), at(2024, 3, 1)),
        ("P1Y2M10DT2H", at(2024, 12, 31), at(2026, 3, 10, 2)),
        # Days are 24 hours in UTC, across a leap day too.
        ("P1D", at(2024, 2, 28, 23), at(2024, 2, 29, 23)),
        ("P365D", at(2024, 1, 1), at(2024, 12, 31)),
        ("PT1H", at(2024, 12, 31, 23), at(2025, 1, 1)),
    ],
)
def test_calendar_arithmetic(text: str, start: datetime, expected: datetime) -> None:
    assert parse_duration(text).after(start) == expected


def test_calendar_arithmetic_is_done_in_utc() -> None:
    # 00:30 on March 1 at +01:00 is 23:30 UTC on February 28: a month later is March 28, 23:30 UTC.
    start = datetime(2025, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert parse_duration("P1M").after(start) == datetime(2025, 3, 28, 23, 30, tzinfo=UTC)


def test_past_the_calendar_end_is_an_overflow() -> None:
    with pytest.raises(OverflowError):
        parse_duration("P1M").after(datetime(9999, 12, 1, tzinfo=UTC))
    with pytest.raises(OverflowError):
        parse_duration("P1D").after(datetime(9999, 12, 31, tzinfo=UTC))


def test_durations_are_never_negative() -> None:
    with pytest.raises(ValueError, match="never negative"):
        Duration(months=-1)
    with pytest.raises(ValueError, match="never negative"):
        Duration(span=timedelta(seconds=-1))


@given(
    st.integers(0, 1000),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=5000)),
)
def test_normal_form_round_trips(months: int, span: timedelta) -> None:
    duration = Duration(months, span)
    assert parse_duration(format_duration(duration)) == duration


@given(st.timedeltas(min_value=timedelta(0), max_value=MAX_DURATION))
def test_exact_durations_round_trip_and_add_exactly(span: timedelta) -> None:
    duration = Duration(span=span)
    assert parse_duration(format_duration(duration)) == duration
    assert duration.after(at(2000, 1, 1)) == at(2000, 1, 1) + span


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1)), st.integers(0, 1200))
def test_a_month_shift_keeps_the_day_or_takes_the_last(start: datetime, months: int) -> None:
    moment = start.replace(tzinfo=UTC)
    later = Duration(months=months).after(moment)
    assert (later.year * 12 + later.month) - (moment.year * 12 + moment.month) == months
    assert later.day == moment.day or (later.day < moment.day and (later + timedelta(days=1)).day == 1)
    assert later.time() == moment.time()
