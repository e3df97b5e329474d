"""The operator's rate limit text `RPS[:BURST]`: what it means, and every way it can be wrong."""

from __future__ import annotations

import pytest

from orchestra_server.settings import Settings, SettingsError
from orchestra_server.wire.rate_limits import (
    DEFAULT_TENANT_RATE_LIMIT,
    MAX_BURST,
    MAX_REQUESTS_PER_SECOND,
    TenantRateLimit,
    parse_rate_limit,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200", TenantRateLimit(200, 400)),
        ("200:400", TenantRateLimit(200, 400)),
        ("5:5", TenantRateLimit(5, 5)),
        (" 7:100 ", TenantRateLimit(7, 100)),
        ("0", TenantRateLimit.OFF),
        ("0:0", TenantRateLimit.OFF),
        (f"{MAX_REQUESTS_PER_SECOND}", TenantRateLimit(MAX_REQUESTS_PER_SECOND, MAX_BURST)),
    ],
)
def test_the_text_form_reads_as_a_bucket(text: str, expected: TenantRateLimit) -> None:
    limit = parse_rate_limit(text)
    assert limit == expected
    # And the text it prints reads back as the same limit.
    assert parse_rate_limit(str(limit)) == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not RPS"),
        ("abc", "is not RPS"),
        ("-1", "is not RPS"),
        ("1.5", "is not RPS"),
        ("10:", "is not RPS"),
        (":10", "is not RPS"),
        ("1:2:3", "is not RPS"),
        ("10:5", "BURST must be at least RPS"),
        ("0:10", "takes no burst"),
        (f"{MAX_REQUESTS_PER_SECOND + 1}", "RPS must be 0"),
        (f"10:{MAX_BURST + 1}", "at most"),
        ("9999999999", "is not RPS"),
    ],
)
def test_a_bad_text_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate_limit(text)


def test_off_and_the_default() -> None:
    assert TenantRateLimit.OFF.off
    assert TenantRateLimit.OFF.problem() is None
    assert str(TenantRateLimit.OFF) == "0"
    assert TenantRateLimit.OFF.describe() == "off"
    assert TenantRateLimit(200, 400) == DEFAULT_TENANT_RATE_LIMIT
    assert DEFAULT_TENANT_RATE_LIMIT.describe() == "200/s, burst 400"
    # A rate of 0 with a burst is neither off nor a limit.
    assert TenantRateLimit(0, 400).problem() is not None


def test_the_default_tenant_limit_comes_from_the_environment() -> None:
    assert Settings.load({}).tenant_rate_limit == DEFAULT_TENANT_RATE_LIMIT
    assert Settings.load({"ORCHESTRA_TENANT_RATE_LIMIT": "50:60"}).tenant_rate_limit == TenantRateLimit(
        50, 60
    )
    assert Settings.load({"ORCHESTRA_TENANT_RATE_LIMIT": "0"}).tenant_rate_limit.off
    # A flag wins over the environment.
    flagged = Settings.load({"ORCHESTRA_TENANT_RATE_LIMIT": "50"}, tenant_rate_limit=TenantRateLimit(9, 9))
    assert flagged.tenant_rate_limit == TenantRateLimit(9, 9)


@pytest.mark.parametrize("text", ["fast", "10:1"])
def test_a_bad_environment_value_is_refused_by_name(text: str) -> None:
    with pytest.raises(SettingsError, match="ORCHESTRA_TENANT_RATE_LIMIT"):
        Settings.load({"ORCHESTRA_TENANT_RATE_LIMIT": text})
