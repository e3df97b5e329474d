"""Every accepted value reads back, through the real edge (REST) and over gRPC; one byte more is a 400.

The values are the shapes that grow most on the way: arrays of small numbers (5.5 times
their JSON as protobuf), of empty objects, strings needing escapes, and strings of `<`
(six times their JSON as the edge prints them).
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from orchestra.v1 import orchestra_service_pb2 as pb

from orchestra_server import errors
from orchestra_server.client import GrpcOrchestraClient
from orchestra_server.service import limits
from orchestra_server.wire import message_sizes
from orchestra_server.wire.json_text import dump_json
from tests import deep_values
from tests.contract.conftest import Service
from tests.contract.helpers import Consumer, assert_error, assert_ok, get_instance, start

MiB = 1024 * 1024
VALUE = limits.MAX_VARIABLE_BYTES
TOTAL = limits.MAX_INSTANCE_VARIABLES_BYTES


def json_size(value: Any) -> int:
    return len(dump_json(value).encode())


def _numbers(size: int) -> list[Any]:
    # "[" + "0," * (n - 1) + "0]", the last number two digits long for an even size.
    count = (size - 1) // 2
    value: list[Any] = [0] * count
    if (size - 1) % 2:
        value[-1] = 10
    return value


def _objects(size: int) -> list[Any]:
    # "[" + "{}," * (n - 1) + "{}]", the last item one or two bytes longer for the remainder.
    count = (size - 1) // 3
    value: list[Any] = [{}] * count
    remainder = size - (3 * count + 1)
    if remainder:
        value[-1] = [0] if remainder == 1 else [10]
    return value


def _escapes(size: int) -> str:
    return "\n" * ((size - 2) // 2) + "x" * (size % 2)


def _brackets(size: int) -> str:
    return "<" * (size - 2)


SHAPES: dict[str, Callable[[int], Any]] = {
    "small numbers": _numbers,
    "empty objects": _objects,
    "escaped characters": _escapes,
    "angle brackets": _brackets,
}


def test_the_shapes_have_the_sizes_asked_for() -> None:
    for shape in SHAPES.values():
        for size in (VALUE - 1, VALUE, VALUE + 1, VALUE + 2, 1000):
            assert json_size(shape(size)) == size


@pytest.fixture
def grpc_client(service: Service, acme: Consumer) -> Iterator[GrpcOrchestraClient]:
    client = GrpcOrchestraClient(service.address, acme.client_id, acme.client_secret)
    yield client
    client.close()


def rest_put(
    http: httpx.Client, consumer: Consumer, instance_id: str, name: str, value: Any
) -> httpx.Response:
    return http.put(
        f"/orchestra-api/instance/{instance_id}/variable/{name}",
        content=dump_json({"value": value}).encode(),
        headers={**consumer.headers, "content-type": "application/json"},
    )


def rest_start(http: httpx.Client, consumer: Consumer, variables: dict[str, Any]) -> httpx.Response:
    return http.post(
        "/orchestra-api/process/three_step/start",
        content=dump_json({"variables": variables}).encode(),
        headers={**consumer.headers, "content-type": "application/json"},
    )


def rest_variables(http: httpx.Client, consumer: Consumer, instance_id: str) -> Any:
    return assert_ok(http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=consumer.headers))


def reads_back(
    http: httpx.Client, consumer: Consumer, client: GrpcOrchestraClient, instance_id: str, expected: Any
) -> None:
    """getVariables and getInstance answer, over REST and over gRPC, with exactly what was written."""
    assert rest_variables(http, consumer, instance_id) == expected
    assert get_instance(http, consumer, instance_id)["id"] == instance_id
    assert client.get_variables(instance_id) == expected
    assert client.get_instance(instance_id).id == instance_id


def instance_count(http: httpx.Client, consumer: Consumer) -> int:
    return len(assert_ok(http.get("/orchestra-api/instances?page_size=1000", headers=consumer.headers)))


@pytest.mark.parametrize("shape", SHAPES)
def test_a_value_at_its_limit_reads_back_and_one_byte_more_is_refused(
    http: httpx.Client, acme: Consumer, grpc_client: GrpcOrchestraClient, shape: str
) -> None:
    at_limit, over = SHAPES[shape](VALUE), SHAPES[shape](VALUE + 1)
    # Written over REST, by start and by setVariable.
    started = assert_ok(rest_start(http, acme, {"v": at_limit}), 201)["instance_id"]
    reads_back(http, acme, grpc_client, started, {"v": at_limit})
    instance_id = start(http, acme, "three_step")
    assert_ok(rest_put(http, acme, instance_id, "v", at_limit))
    reads_back(http, acme, grpc_client, instance_id, {"v": at_limit})
    # Written over gRPC.
    other = grpc_client.start_process("three_step", {"v": at_limit})
    reads_back(http, acme, grpc_client, other, {"v": at_limit})
    # One byte more: 400 naming the variable, nothing stored.
    before = instance_count(http, acme)
    assert_error(
        rest_put(http, acme, instance_id, "w", over), 400, "variable w is larger than 1048576 bytes as JSON"
    )
    assert_error(rest_start(http, acme, {"w": over}), 400, "variable w is larger than 1048576 bytes as JSON")
    with pytest.raises(errors.InvalidArgument, match="variable w is larger than 1048576 bytes"):
        grpc_client.set_variable(other, "w", over)
    with pytest.raises(errors.InvalidArgument, match="variable w is larger than 1048576 bytes"):
        grpc_client.start_process("three_step", {"w": over})
    assert instance_count(http, acme) == before
    assert rest_variables(http, acme, instance_id) == {"v": at_limit}
    assert grpc_client.get_variables(other) == {"v": at_limit}


def _fill(shape: Callable[[int], Any], total: int) -> dict[str, Any]:
    """Variables `a` (a full value) and `b` whose JSON object is exactly `total` bytes."""
    # {"a":<a>,"b":<b>}: 11 bytes besides the two values.
    return {"a": shape(VALUE), "b": shape(total - VALUE - 11)}


@pytest.mark.parametrize("shape", ["small numbers", "angle brackets"])
def test_an_instance_at_its_total_reads_back_and_one_byte_more_is_refused(
    http: httpx.Client, acme: Consumer, grpc_client: GrpcOrchestraClient, shape: str
) -> None:
    full, over = _fill(SHAPES[shape], TOTAL), _fill(SHAPES[shape], TOTAL + 1)
    assert json_size(full) == TOTAL
    assert json_size(over) == TOTAL + 1
    refusal = "the variables of one instance are limited to 2097152 bytes together as JSON"

    instance_id = start(http, acme, "three_step")
    assert_ok(rest_put(http, acme, instance_id, "a", full["a"]))
    assert_error(rest_put(http, acme, instance_id, "b", over["b"]), 400, refusal)
    assert rest_variables(http, acme, instance_id) == {"a": full["a"]}
    assert_ok(rest_put(http, acme, instance_id, "b", full["b"]))
    reads_back(http, acme, grpc_client, instance_id, full)
    assert_error(rest_put(http, acme, instance_id, "c", 0), 400, refusal)

    other = grpc_client.start_process("three_step", {"a": full["a"]})
    with pytest.raises(errors.InvalidArgument, match=refusal):
        grpc_client.set_variable(other, "b", over["b"])
    grpc_client.set_variable(other, "b", full["b"])
    reads_back(http, acme, grpc_client, other, full)
    with pytest.raises(errors.InvalidArgument, match=refusal):
        grpc_client.set_variable(other, "c", 0)
    assert rest_variables(http, acme, instance_id) == full
    assert grpc_client.get_variables(other) == full


@pytest.mark.parametrize("leaf", list(deep_values.LEAVES.values()), ids=list(deep_values.LEAVES))
def test_nesting_is_exact_and_any_deeper_value_is_a_400(
    http: httpx.Client, acme: Consumer, service: Service, leaf: Any
) -> None:
    def put(depth: int) -> httpx.Response:
        return http.put(
            f"/orchestra-api/instance/{instance_id}/variable/deep",
            content=f'{{"value":{deep_values.nested_json(depth, leaf)}}}'.encode(),
            headers={**acme.headers, "content-type": "application/json"},
        )

    def post(depth: int) -> httpx.Response:
        return http.post(
            "/orchestra-api/process/three_step/start",
            content=f'{{"variables":{{"deep":{deep_values.nested_json(depth, leaf)}}}}}'.encode(),
            headers={**acme.headers, "content-type": "application/json"},
        )

    instance_id = start(http, acme, "three_step")
    for depth in (31, 32):
        assert_ok(put(depth))
        assert rest_variables(http, acme, instance_id) == {"deep": deep_values.nested(depth, leaf)}
        started = assert_ok(post(depth), 201)["instance_id"]
        assert rest_variables(http, acme, started) == {"deep": deep_values.nested(depth, leaf)}
    before = instance_count(http, acme)
    channel = grpc.insecure_channel(service.address)
    set_variable = channel.unary_unary("/orchestra.v1.OrchestraService/SetVariable")
    request = pb.SetVariableRequest(instance_id=instance_id, name="deep").SerializeToString()
    try:
        for depth in (33, 34, 50, 51, 100, 1000, 10_000):
            for response in (put(depth), post(depth)):
                assert_error(response, 400)
            value = deep_values.nested_value_bytes(depth, leaf)
            with pytest.raises(grpc.RpcError) as caught:
                set_variable(
                    deep_values.with_value_field(request, 3, value), metadata=_bearer(acme), timeout=30
                )
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, depth
            assert "deeper than 32 levels" in (caught.value.details() or ""), depth
    finally:
        channel.close()
    assert instance_count(http, acme) == before
    assert rest_variables(http, acme, instance_id) == {"deep": deep_values.nested(32, leaf)}


def _bearer(consumer: Consumer) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {consumer.token}"),)


def test_integers_beyond_2_to_the_53_are_a_400_naming_the_variable(
    http: httpx.Client, acme: Consumer
) -> None:
    instance_id = start(http, acme, "three_step")
    exact = '[9007199254740991,-9007199254740991,2.5,1e-300,{"x":[123456789012345]}]'
    response = http.put(
        f"/orchestra-api/instance/{instance_id}/variable/n",
        content=f'{{"value":{exact}}}'.encode(),
        headers={**acme.headers, "content-type": "application/json"},
    )
    assert_ok(response)
    raw = http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=acme.headers).text
    assert json.loads(raw) == {"n": json.loads(exact)}
    assert "9007199254740991" in raw
    before = instance_count(http, acme)
    for text in (
        "9007199254740992",
        "9007199254740993",
        "-9007199254740992",
        "1e300",
        '{"a":[1,{"b":1e16}]}',
    ):
        for response in (
            http.put(
                f"/orchestra-api/instance/{instance_id}/variable/amount",
                content=f'{{"value":{text}}}'.encode(),
                headers={**acme.headers, "content-type": "application/json"},
            ),
            http.post(
                "/orchestra-api/process/three_step/start",
                content=f'{{"variables":{{"ok":1,"amount":{text}}}}}'.encode(),
                headers={**acme.headers, "content-type": "application/json"},
            ),
        ):
            message = assert_error(response, 400)
            assert message.startswith("variable amount holds an integer beyond +/-9007199254740991"), message
    # Beyond what a double holds at all, the edge refuses the JSON itself.
    assert_error(
        http.put(
            f"/orchestra-api/instance/{instance_id}/variable/amount",
            content=b'{"value":1e400}',
            headers={**acme.headers, "content-type": "application/json"},
        ),
        400,
    )
    assert instance_count(http, acme) == before
    assert rest_variables(http, acme, instance_id) == {"n": json.loads(exact)}


def test_the_edge_prints_nothing_more_than_six_times_its_stored_size(
    http: httpx.Client, acme: Consumer
) -> None:
    """The REST factor of message_sizes, checked for every character and for awkward doubles."""
    instance_id = start(http, acme, "three_step")
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    chunk = 100_000
    for first in range(0, len(code_points), chunk):
        text = "".join(map(chr, code_points[first : first + chunk]))
        assert_ok(rest_put(http, acme, instance_id, "s", text))
        raw = http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=acme.headers).content
        printed = raw[len(b'{"s":"') : -len(b'"}')]
        position = 0
        for character in text:
            stored = json_size(character) - 2
            size = _printed_size(printed, position, character)
            assert size <= message_sizes.REST_EXPANSION * stored, (
                hex(ord(character)),
                printed[position:][:12],
            )
            position += size
        assert position == len(printed)
    generator = random.Random(53)
    doubles = [5e-324, -5e-324, 4.35e-320, 2.2250738585072014e-308, 1e-7, 0.1, 1 / 3, 123456789012345.6]
    doubles += [
        x for x in (struct.unpack("<d", generator.randbytes(8))[0] for _ in range(20_000)) if _fits(x)
    ]
    assert_ok(rest_put(http, acme, instance_id, "d", doubles))
    raw = http.get(f"/orchestra-api/instance/{instance_id}/variables", headers=acme.headers).content
    printed_numbers = json.loads(raw)["d"]
    assert printed_numbers == doubles
    printed_list = raw[raw.index(b'"d":[') + 4 :].split(b"]", 1)[0] + b"]"
    for number, text in zip(doubles, printed_list[1:-1].split(b","), strict=True):
        assert len(text) <= message_sizes.REST_EXPANSION * len(dump_json(number)), (number, text)


def _fits(number: float) -> bool:
    return math.isfinite(number) and (not number.is_integer() or abs(number) <= limits.MAX_EXACT_INTEGER)


def _printed_size(printed: bytes, position: int, character: str) -> int:
    """Bytes the edge printed for `character` at `position`: itself, or an escape."""
    if printed[position : position + 2] == b"\\u":
        high = int(printed[position + 2 : position + 6], 16)
        size = 12 if 0xD800 <= high <= 0xDBFF else 6
    elif printed[position : position + 1] == b"\\":
        size = 2
    else:
        # Unescaped: exactly the character's UTF-8, and a character JSON lets stand for itself
        # (what decoding the bytes would check, without a decoder call for each of a million).
        encoded = character.encode()
        assert printed[position : position + len(encoded)] == encoded
        assert character not in _MUST_ESCAPE, hex(ord(character))
        return len(encoded)
    assert json.loads(b'"' + printed[position : position + size] + b'"') == character
    return size


# What a JSON string may not hold unescaped: the quote, the backslash and the control characters.
_MUST_ESCAPE = frozenset('"\\' + "".join(map(chr, range(0x20))))
