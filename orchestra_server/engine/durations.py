"""ISO-8601 durations (PT1H, P1DT2H, PT0.5S) parsed strictly into timedeltas, and written back."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

# A cap far above any sensible wait that keeps `now + duration` inside datetime's range.
MAX_DURATION = timedelta(days=36_525)

_NUMBER = r"([0-9]{1,12}(?:\.[0-9]{1,9})?)"
_DURATION = re.compile(
    rf"P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?",
)
# Microseconds per W, D, H, M, S.
_UNITS = (604_800_000_000, 86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000)
_MAX_MICROS = MAX_DURATION // timedelta(microseconds=1)
_EXAMPLE = "an ISO-8601 duration such as PT1H, P1DT2H or PT0.5S"


class DurationError(ValueError):
    """The text is not a duration this engine accepts; the message says why."""


def parse_duration(text: str) -> timedelta:
    """Parse weeks, days, hours, minutes and seconds; years and months are refused (their length varies)."""
    match = _DURATION.fullmatch(text) if len(text) <= 64 else None
    if match is None or text in ("P", "PT") or text.endswith("T"):
        if re.fullmatch(r"P[0-9.]+[YM].*", text):
            raise DurationError(f"years and months are not supported (their length varies); use {_EXAMPLE}")
        raise DurationError(f"not {_EXAMPLE}")
    micros = Decimal(0)
    for group, unit in zip(match.groups(), _UNITS, strict=True):
        if group is not None:
            micros += Decimal(group) * unit
    if micros != micros.to_integral_value():
        raise DurationError("durations are precise to the microsecond")
    if micros > _MAX_MICROS:
        raise DurationError("durations may not exceed 100 years")
    return timedelta(microseconds=int(micros))


def format_duration(duration: timedelta) -> str:
    """Write a duration in the normal form `parse_duration` reads back to the same value."""
    days, seconds, micros = duration.days, duration.seconds, duration.microseconds
    if days < 0:
        raise ValueError("negative durations have no ISO-8601 form here")
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or micros:
        time += (f"{seconds}.{micros:06d}".rstrip("0") if micros else str(seconds)) + "S"
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"
