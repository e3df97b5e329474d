"""ISO-8601 durations (PT1H, P1DT2H, P1M, P1Y2M10DT2H) parsed strictly, added to UTC times, and written back.

Years and months are calendar units: adding them moves the date by whole months and keeps the
day of the month, or takes the month's last day when it has no such day (a month after January
31 is the last day of February; a year after February 29 is February 28). The rest (weeks, days,
hours, minutes, seconds) is an exact span added afterwards; in UTC a day is always 24 hours. This
is the order XML Schema and most calendars use: P1M1D after January 30 is March 1 (or 2).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

# A cap far above any sensible wait that keeps `now + duration` inside datetime's range.
MAX_DURATION = timedelta(days=36_525)
# A month counts as its average length (a 400-year Gregorian cycle has 146,097 days) against the cap.
_AVERAGE_MONTH = timedelta(days=146_097) / 4800

_NUMBER = r"([0-9]{1,12}(?:\.[0-9]{1,9})?)"
_WHOLE = r"([0-9]{1,12})"
_DURATION = re.compile(
    rf"P(?:{_WHOLE}Y)?(?:{_WHOLE}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?",
)
# Microseconds per W, D, H, M, S.
_UNITS = (604_800_000_000, 86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000)
_MAX_MICROS = MAX_DURATION // timedelta(microseconds=1)
_EXAMPLE = "an ISO-8601 duration such as PT1H, P1DT2H, P1M or P1Y2M10DT2H"


class DurationError(ValueError):
    """The text is not a duration this engine accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class Duration:
    """A calendar part (whole months; a year is twelve) and an exact part, both never negative."""

    months: int = 0
    span: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.months < 0 or self.span < timedelta(0):
            raise ValueError("durations are never negative")

    def after(self, moment: datetime) -> datetime:
        """`moment` plus this duration, months first, in UTC; OverflowError past the calendar's end."""
        moment = moment.astimezone(UTC)
        if self.months:
            index = moment.year * 12 + (moment.month - 1) + self.months
            year, month = divmod(index, 12)
            if year > 9999:
                raise OverflowError("the date is past the year 9999")
            day = min(moment.day, calendar.monthrange(year, month + 1)[1])
            moment = moment.replace(year=year, month=month + 1, day=day)
        return moment + self.span


def parse_duration(text: str) -> Duration:
    """Parse years, months (whole numbers), weeks, days, hours, minutes and seconds."""
    match = _DURATION.fullmatch(text) if len(text) <= 64 else None
    if match is None or text in ("P", "PT") or text.endswith("T"):
        if re.fullmatch(r"P(?:[0-9]+Y)?[0-9]*\.[0-9]*[YM].*", text):
            raise DurationError("years and months must be whole numbers")
        raise DurationError(f"not {_EXAMPLE}")
    years, months, *exact = match.groups()
    micros = Decimal(0)
    for group, unit in zip(exact, _UNITS, strict=True):
        if group is not None:
            micros += Decimal(group) * unit
    if micros != micros.to_integral_value():
        raise DurationError("durations are precise to the microsecond")
    total_months = int(years or 0) * 12 + int(months or 0)
    too_long = DurationError("durations may not exceed 100 years")
    if micros > _MAX_MICROS or total_months > 1200:
        raise too_long
    span = timedelta(microseconds=int(micros))
    if total_months * _AVERAGE_MONTH + span > MAX_DURATION:
        raise too_long
    return Duration(total_months, span)


def format_duration(duration: Duration) -> str:
    """Write a duration in the normal form `parse_duration` reads back to the same value."""
    years, months = divmod(duration.months, 12)
    days, seconds, micros = duration.span.days, duration.span.seconds, duration.span.microseconds
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or micros:
        time += (f"{seconds}.{micros:06d}".rstrip("0") if micros else str(seconds)) + "S"
    date = (f"{years}Y" if years else "") + (f"{months}M" if months else "") + (f"{days}D" if days else "")
    text = "P" + date + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"
