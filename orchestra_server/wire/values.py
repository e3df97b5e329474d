"""Conversions between protobuf JSON values and plain Python JSON values."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import struct_pb2

from orchestra_server.errors import LimitExceeded
from orchestra_server.wire.json_text import Json

# Numbers travel as IEEE doubles; integral ones within this range come back as ints.
MAX_SAFE_INTEGER = 2**53
MAX_DEPTH = 64


def to_python(value: struct_pb2.Value, depth: int = 0) -> Json:
    if depth > MAX_DEPTH:
        raise LimitExceeded("value is nested too deeply")
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: to_python(v, depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(v, depth + 1) for v in value.list_value.values]
    return None


def map_to_python(values: Mapping[str, struct_pb2.Value]) -> dict[str, Json]:
    return {k: to_python(v) for k, v in values.items()}


def to_proto(value: Json, out: struct_pb2.Value | None = None) -> struct_pb2.Value:
    target = out if out is not None else struct_pb2.Value()
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, dict):
        fields = target.struct_value.fields
        target.struct_value.SetInParent()
        for k, v in value.items():
            to_proto(v, fields[k])
    elif isinstance(value, list):
        target.list_value.SetInParent()
        for item in value:
            to_proto(item, target.list_value.values.add())
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    return target
