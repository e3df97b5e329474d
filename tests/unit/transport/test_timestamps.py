"""The servicers' Timestamp conversion agrees with protobuf's own for every aware moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from orchestra_server.transport.timestamps import set_timestamp, timestamp

_zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
# Timestamp's own range: 0001-01-01 to 9999-12-31 UTC, with a day's margin for the zone offsets.
_moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_zones)


def _reference(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@given(_moments)
def test_matches_protobuf_conversion(moment: datetime) -> None:
    expected = _reference(moment)
    assert timestamp(moment) == expected
    in_place = timestamp_pb2.Timestamp()
    set_timestamp(in_place, moment)
    assert in_place == expected
    assert in_place.ToDatetime(tzinfo=UTC) == moment


def test_before_the_epoch_keeps_nanos_positive() -> None:
    stamp = timestamp(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC))
    assert stamp is not None
    assert (stamp.seconds, stamp.nanos) == (-1, 500_000_000)


def test_none_leaves_the_field_unset() -> None:
    assert timestamp(None) is None
