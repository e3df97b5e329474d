"""A request rate limit and its text form `RPS[:BURST]`, as operators write it.

The same value travels from the `--tenant-rate-limit` flag, the environment and the tenants
table to the edge, which counts it; it lives here so that every one of those layers can name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

# Envoy keeps token counts in 32 bits; the edge multiplies a tenant's limit by its anonymous
# factor (edge.config.UNAUTHENTICATED_RATE_FACTOR), so the largest limit stays well below that.
MAX_REQUESTS_PER_SECOND = 10_000_000
MAX_BURST = 20_000_000
# A burst of this many times the rate when none is given, as in the default 200:400.
DEFAULT_BURST_FACTOR = 2
TEXT_FORM = "RPS[:BURST]"
_TEXT = re.compile(r"(\d{1,9})(?::(\d{1,9}))?")


@dataclass(frozen=True)
class TenantRateLimit:
    """A token bucket: `burst` requests at once, refilled by `requests_per_second` every
    second. `TenantRateLimit.OFF` (0:0) counts nothing. Counted per edge process."""

    requests_per_second: int = 200
    burst: int = 400

    OFF: ClassVar[TenantRateLimit]

    @property
    def off(self) -> bool:
        return self.requests_per_second == 0 and self.burst == 0

    def problem(self) -> str | None:
        """Why this is not a usable limit, or None when it is."""
        if self.off:
            return None
        if not 1 <= self.requests_per_second <= MAX_REQUESTS_PER_SECOND:
            return f"RPS must be 0 (off) or from 1 to {MAX_REQUESTS_PER_SECOND}"
        if not self.requests_per_second <= self.burst <= MAX_BURST:
            return f"BURST must be at least RPS and at most {MAX_BURST}"
        return None

    def __str__(self) -> str:
        return "0" if self.off else f"{self.requests_per_second}:{self.burst}"

    def describe(self) -> str:
        """For people: `200/s, burst 400` or `off`."""
        return "off" if self.off else f"{self.requests_per_second}/s, burst {self.burst}"


TenantRateLimit.OFF = TenantRateLimit(0, 0)
# What each tenant may send unless the operator says otherwise.
DEFAULT_TENANT_RATE_LIMIT = TenantRateLimit()


def parse_rate_limit(text: str) -> TenantRateLimit:
    """`RPS[:BURST]` as a limit (BURST defaults to twice RPS; `0` turns the limit off).

    Raises ValueError with a message that says what is wrong.
    """
    found = _TEXT.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not {TEXT_FORM}: whole requests per second, optionally ':' and a burst "
            "(e.g. 200 or 200:400; 0 turns the limit off)"
        )
    rate = int(found.group(1))
    if found.group(2) is None:
        limit = TenantRateLimit.OFF if rate == 0 else TenantRateLimit(rate, rate * DEFAULT_BURST_FACTOR)
    else:
        limit = TenantRateLimit(rate, int(found.group(2)))
        if rate == 0 and limit.burst != 0:
            raise ValueError(f"{text!r}: a rate of 0 turns the limit off and takes no burst")
    problem = limit.problem()
    if problem is not None:
        raise ValueError(f"{text!r}: {problem}")
    return limit
