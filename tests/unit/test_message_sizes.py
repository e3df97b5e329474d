"""The protobuf expansion factor that sizes every gRPC limit, checked against real serialisation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from orchestra.v1 import orchestra_service_pb2 as pb

from orchestra_server.service import limits
from orchestra_server.wire import message_sizes, values
from orchestra_server.wire.json_text import dump_json

MiB = 1024 * 1024


def _repeat(item: Any, per_item: int) -> Callable[[int], Any]:
    """A list of `item` whose compact JSON is at most `size` bytes (`per_item` bytes each, with the comma)."""
    return lambda size: [item] * ((size - 1) // per_item)


def _short_keys(size: int) -> dict[str, int]:
    value: dict[str, int] = {}
    used = 1  # `{`, then `"key":0` and `,` or `}` per member
    while used + len(key := f"{len(value):x}") + 5 <= size:
        value[key] = 0
        used += len(key) + 5
    return value


def _deep(size: int) -> Any:
    value: Any = [0] * ((size - 1 - 2 * (limits.MAX_JSON_DEPTH - 2)) // 2)
    for _ in range(limits.MAX_JSON_DEPTH - 2):
        value = [value]
    return value


# The shapes that cost protobuf the most per byte of JSON, each filling a size given in bytes.
WORST_SHAPES: dict[str, Callable[[int], Any]] = {
    "small numbers": _repeat(0, 2),
    "denormals": _repeat(5e-324, 7),
    "empty objects": _repeat({}, 3),
    "empty lists": _repeat([], 3),
    "empty strings": _repeat("", 3),
    "nulls": _repeat(None, 5),
    "one-number lists": _repeat([0], 4),
    "short-key objects": _short_keys,
    "escaped string": lambda size: "\n" * ((size - 2) // 2),
    "angle brackets": lambda size: "<" * (size - 2),
    "small numbers 31 lists deep": _deep,
}


def json_size(value: Any) -> int:
    return len(dump_json(value).encode())


def as_proto(value: Any, out: struct_pb2.Value) -> None:
    """values.to_proto, with long lists of one repeated item built from the wire bytes of one entry
    (a repeated field is the concatenation of its entries), which keeps these tests fast."""
    if isinstance(value, list) and len(value) > 1 and all(item == value[0] for item in value):
        entry = struct_pb2.ListValue()
        as_proto(value[0], entry.values.add())
        out.list_value.MergeFromString(entry.SerializeToString() * len(value))
    elif isinstance(value, list) and len(value) == 1:
        as_proto(value[0], out.list_value.values.add())
    else:
        values.to_proto(value, out)


def test_the_fast_builder_builds_what_to_proto_builds() -> None:
    for shape in WORST_SHAPES.values():
        value = shape(4096)
        fast = struct_pb2.Value()
        as_proto(value, fast)
        assert fast.SerializeToString(deterministic=True) == values.to_proto(value).SerializeToString(
            deterministic=True
        )


@pytest.mark.parametrize("shape", WORST_SHAPES)
def test_one_value_at_its_limit_fits_a_request_and_a_response(shape: str) -> None:
    value = WORST_SHAPES[shape](limits.MAX_VARIABLE_BYTES)
    size = json_size(value)
    assert limits.MAX_VARIABLE_BYTES * 0.99 < size <= limits.MAX_VARIABLE_BYTES
    request = pb.SetVariableRequest(instance_id="i" * limits.MAX_ID_LENGTH, name="n" * 128)
    as_proto(value, request.value)
    assert request.ByteSize() <= message_sizes.protobuf_bound(size)
    response = pb.GetVariablesResponse()
    as_proto(value, response.variables["n" * 128])
    assert response.ByteSize() <= message_sizes.protobuf_bound(size)
    assert response.ByteSize() <= message_sizes.MAX_RESPONSE_MESSAGE_BYTES


@pytest.mark.parametrize("shape", WORST_SHAPES)
def test_an_instance_at_its_total_fits_the_response_limit(shape: str) -> None:
    response = pb.GetVariablesResponse()
    variables: dict[str, Any] = {}
    # Full-size values, then one filling the rest of the total.
    while (room := limits.MAX_INSTANCE_VARIABLES_BYTES - json_size(variables) - 8) > 16:
        name = f"v{len(variables)}"
        variables[name] = WORST_SHAPES[shape](min(room, limits.MAX_VARIABLE_BYTES))
    assert (
        limits.MAX_INSTANCE_VARIABLES_BYTES * 0.99
        < json_size(variables)
        <= limits.MAX_INSTANCE_VARIABLES_BYTES
    )
    for name, value in variables.items():
        as_proto(value, response.variables[name])
    assert len(response.SerializeToString()) <= message_sizes.MAX_RESPONSE_MESSAGE_BYTES


def test_many_small_variables_fit_a_start_request() -> None:
    variables = {f"v{i}": [0] * 500 for i in range(limits.MAX_VARIABLES_PER_START)}
    request = pb.StartProcessRequest(definition_id="d" * 64)
    for name, value in variables.items():
        as_proto(value, request.variables[name])
    assert request.ByteSize() <= message_sizes.protobuf_bound(json_size(variables))


def test_the_edge_admits_no_body_the_service_cannot_receive() -> None:
    body = {"variables": {"a": WORST_SHAPES["small numbers"](limits.MAX_REQUEST_BYTES - 20)}}
    assert json_size(body) <= limits.MAX_REQUEST_BYTES
    request = pb.StartProcessRequest(definition_id="three_step")
    as_proto(body["variables"]["a"], request.variables["a"])
    assert request.ByteSize() <= message_sizes.MAX_REQUEST_MESSAGE_BYTES


def test_the_factor_is_reached_so_no_smaller_one_would_do() -> None:
    value = WORST_SHAPES["small numbers"](MiB)
    message = struct_pb2.Value()
    as_proto(value, message)
    assert message.ByteSize() / json_size(value) > float(message_sizes.PROTOBUF_EXPANSION) * 0.999


def test_the_limits_are_derived_from_the_published_ones() -> None:
    assert message_sizes.MAX_REQUEST_MESSAGE_BYTES == (
        limits.MAX_REQUEST_BYTES * 11 // 2 + message_sizes.ENVELOPE_BYTES
    )
    assert message_sizes.MAX_RESPONSE_MESSAGE_BYTES == (
        limits.MAX_INSTANCE_VARIABLES_BYTES * 11 // 2 + message_sizes.ENVELOPE_BYTES
    )
    assert message_sizes.MAX_REST_RESPONSE_BYTES == (
        limits.MAX_INSTANCE_VARIABLES_BYTES * 6 + message_sizes.ENVELOPE_BYTES
    )


def test_the_node_client_allows_the_same_message_sizes() -> None:
    source = (Path(__file__).resolve().parents[2] / "clients" / "node" / "orchestra-client.js").read_text()
    found = re.search(r"const MAX_MESSAGE_BYTES = ([0-9_]+);", source)
    assert found is not None
    largest = max(message_sizes.MAX_REQUEST_MESSAGE_BYTES, message_sizes.MAX_RESPONSE_MESSAGE_BYTES)
    assert int(found.group(1).replace("_", "")) == largest
