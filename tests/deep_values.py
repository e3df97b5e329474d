"""Values nested to a given depth, as Python values, JSON text and protobuf wire bytes.

Depth as published: a scalar, [] or {} is depth 1, each enclosing container adds one. The
text and the bytes are built without recursion, so any depth (10,000 included) can be sent.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import struct_pb2

LEAVES: dict[str, Any] = {"scalar": 1, "empty list": [], "empty object": {}}


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_json(depth: int, leaf: Any) -> str:
    return "[" * (depth - 1) + json.dumps(leaf) + "]" * (depth - 1)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_value_bytes(depth: int, leaf: Any) -> bytes:
    """The wire bytes of the google.protobuf.Value for `nested(depth, leaf)`."""
    value = struct_pb2.Value()
    value.MergeFrom(_leaf(leaf))
    data = value.SerializeToString()
    list_value_field = struct_pb2.Value.DESCRIPTOR.fields_by_name["list_value"].number
    values_field = struct_pb2.ListValue.DESCRIPTOR.fields_by_name["values"].number
    for _ in range(depth - 1):
        data = _field(list_value_field, _field(values_field, data))
    return data


def _leaf(leaf: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if leaf == []:
        value.list_value.SetInParent()
    elif leaf == {}:
        value.struct_value.SetInParent()
    else:
        value.number_value = float(leaf)
    return value


def with_value_field(message: bytes, field_number: int, value: bytes) -> bytes:
    """`message` with one more length-delimited field holding `value` (a Value, or a map entry)."""
    return message + _field(field_number, value)


def map_entry(key: str, value: bytes) -> bytes:
    """A map<string, Value> entry: key is field 1, value field 2."""
    return _field(1, key.encode()) + _field(2, value)
