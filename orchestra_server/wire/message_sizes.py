"""The largest gRPC messages and REST bodies the published limits allow, for sizing every buffer on the way.

Every limit is published in compact JSON bytes (wire/limits.py), but the same value is
larger on the wire, so each buffer is sized as a worst-case factor times a published limit.

Protobuf (gRPC). A JSON value travels as google.protobuf.Value; per byte of compact JSON
the worst case is a number inside an array: at least 2 JSON bytes (one digit and the
separating comma) become 11 protobuf bytes (the ListValue entry's tag and length, the
Value's tag and an 8-byte double). Every other shape costs less per JSON byte: an object
member `"":0,` takes 5 JSON bytes for at most 15 (tag, length, key tag, key length, Value tag,
length, 9-byte Value), `[],` or `{},` 3 for 4, `"",` 3 for 4 and each further character
as much in both, true/false/null more in JSON; wrapping a container in another costs 2
JSON bytes for two tags and two length prefixes. So 11/2 is the factor, up to a constant
per message (the envelope: ids, names, map entries, longer length prefixes), and arrays of
small numbers reach it.

REST (the edge's transcoder). It prints what it received with the same text as stored,
except that it escapes some characters as `\\uXXXX`: `<`, `>` and DEL (one byte each) and
C1 controls and format characters (two or three bytes) take six bytes, and astral format
characters (four bytes) twelve, as a surrogate pair; and it prints some doubles with more
digits (the denormal `5e-324` as `4.94065645841247e-324`: 7 bytes in an array become 22).
So 6 is the factor, reached by strings of `<`.

tests/unit/test_message_sizes.py checks the protobuf factor against real serialisation of
the worst-case shapes, tests/contract/test_value_limits.py the REST one against the edge.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil

from orchestra_server.wire import limits

PROTOBUF_EXPANSION = Fraction(11, 2)
REST_EXPANSION = 6
# Covers what is not a JSON value: ids and names (a REST path can carry up to the edge's
# 60 KiB of headers), field tags, map entries and length prefixes, the response wrapper.
ENVELOPE_BYTES = 64 * 1024


def protobuf_bound(json_bytes: int) -> int:
    """The largest protobuf message that carries `json_bytes` of compact JSON values."""
    return ceil(PROTOBUF_EXPANSION * json_bytes) + ENVELOPE_BYTES


def rest_bound(json_bytes: int) -> int:
    """The largest transcoded REST body, or protobuf message, for `json_bytes` of compact JSON values."""
    return max(REST_EXPANSION * json_bytes + ENVELOPE_BYTES, protobuf_bound(json_bytes))


# A request: everything the edge admits, so the service can decode it and answer for itself
# (directly over gRPC a valid request is smaller still: one value or one start's variables).
MAX_REQUEST_MESSAGE_BYTES = protobuf_bound(limits.MAX_REQUEST_BYTES)
# A response: getVariables of an instance at its total is the largest answer there is.
MAX_RESPONSE_MESSAGE_BYTES = protobuf_bound(limits.MAX_INSTANCE_VARIABLES_BYTES)
# What the edge holds of one response: the gRPC message in, the JSON out.
MAX_REST_RESPONSE_BYTES = rest_bound(limits.MAX_INSTANCE_VARIABLES_BYTES)

# Channel options of a client: it may send what the service receives, and receive what it sends.
CLIENT_MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", MAX_REQUEST_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_RESPONSE_MESSAGE_BYTES),
)
