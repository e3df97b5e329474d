"""Requests the protobuf decoder refuses get INVALID_ARGUMENT, never grpc's INTERNAL.

The decoder refuses broken bytes and, past its recursion limit (100 messages, about 50
levels of JSON nesting as Value/ListValue/Struct), any value nested that deep. grpc itself
would answer such a call INTERNAL ("Exception deserializing request!"), a 500 at the edge,
before any servicer runs; here the failure becomes a marker the method answers with a 400.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from orchestra_server.transport.errors import abort_with
from orchestra_server.transport.interception import MethodWrapper
from orchestra_server.wire.limits import MAX_JSON_DEPTH

UNDECODABLE_MESSAGE = (
    f"request could not be decoded: it is malformed or nests a value deeper than {MAX_JSON_DEPTH} levels"
)


class _Undecodable:
    """Stands in for a request message the decoder refused."""


UNDECODABLE = _Undecodable()

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _refuse(context: grpc.ServicerContext) -> NoReturn:
    abort_with(context, grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)


def _checked_unary(behavior: Behavior) -> Behavior:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if request is UNDECODABLE:
            _refuse(context)
        return behavior(request, context)

    return checked


def _checked_stream(behavior: Behavior) -> Behavior:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def decoded() -> Iterator[Any]:
            for request in requests:
                if request is UNDECODABLE:
                    _refuse(context)
                yield request

        return behavior(decoded(), context)

    return checked


class RequestDecodingInterceptor(MethodWrapper):
    """Innermost interceptor: every method's decoder wrapped, so its failure reaches the method."""

    def wrap(self, handler: Any, method: str) -> Any:
        decode = handler.request_deserializer
        if decode is None:
            return handler

        def tolerant(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:  # DecodeError, or whatever else the decoder raises on hostile bytes
                return UNDECODABLE

        check = _checked_stream if handler.request_streaming else _checked_unary
        kinds = {
            (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
        }
        build, behavior = kinds[(handler.request_streaming, handler.response_streaming)]
        return build(
            check(behavior),
            request_deserializer=tolerant,
            response_serializer=handler.response_serializer,
        )
