"""Aware datetimes as protobuf Timestamps, for every servicer.

``Timestamp.FromDatetime`` works through calendar arithmetic in Python (about 7-10 us a call
here); a list answer sets two or three per item, so the servicers set seconds and nanos from
the difference to the epoch instead (a fifth of that). The stored times are UTC and aware.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(stamp: timestamp_pb2.Timestamp, moment: datetime) -> None:
    """Writes `moment` (aware) into a message's Timestamp field in place."""
    delta = moment - _EPOCH
    # timedelta keeps seconds and microseconds non-negative, so a moment before the epoch
    # still gives nanos in [0, 1e9) as Timestamp requires.
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A new Timestamp for `moment`; None leaves a message field unset (REST leaves it out)."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    set_timestamp(stamp, moment)
    return stamp
