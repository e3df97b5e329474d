"""The observability interceptor driven directly: status codes, request ids, caller context, no leaks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest

from bench.calls import CallContext as FakeContext
from orchestra_server.observability.interceptor import ObservabilityInterceptor, recording_caller
from orchestra_server.observability.logs import JsonFormatter
from orchestra_server.observability.metrics import Metrics
from orchestra_server.service.processes import Caller

SECRET_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbGllbnQtNyJ9.dG9wLXNlY3JldC1zaWduYXR1cmU"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def wrap(
    metrics: Metrics,
    behaviour: Callable[[Any, Any], Any],
    method: str = "/orchestra.v1.OrchestraService/StartProcess",
) -> Callable[[Any, Any], Any]:
    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    class Details(grpc.HandlerCallDetails):
        pass

    details = Details()
    details.method = method
    details.invocation_metadata = ()
    wrapped = ObservabilityInterceptor(metrics).intercept_service(lambda _d: handler, details)
    return wrapped.unary_unary  # type: ignore[no-any-return]


def count(metrics: Metrics, rpc: str, code: str) -> float:
    value = metrics.registry.get_sample_value("orchestra_rpc_requests_total", {"rpc": rpc, "code": code})
    return value or 0.0


def test_a_successful_call_is_counted_as_ok_and_logged_once(lines: io.StringIO) -> None:
    metrics = Metrics()
    call = wrap(metrics, lambda request, context: "answer")
    assert call("request", FakeContext((("x-request-id", "edge-id-1"),))) == "answer"
    assert count(metrics, "StartProcess", "OK") == 1
    [access] = [line for line in parsed(lines) if line["logger"] == "orchestra.access"]
    assert access["level"] == "INFO"
    assert (access["rpc"], access["status"], access["request_id"]) == ("StartProcess", "OK", "edge-id-1")
    assert access["duration_ms"] >= 0


def test_an_abort_is_counted_with_its_code() -> None:
    metrics = Metrics()

    def refuse(request: Any, context: FakeContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing access token")

    with pytest.raises(Exception):  # noqa: B017, PT011  # grpc's bare abort exception
        wrap(metrics, refuse)("request", FakeContext())
    assert count(metrics, "StartProcess", "UNAUTHENTICATED") == 1
    assert count(metrics, "StartProcess", "OK") == 0


def test_an_exception_escaping_without_a_status_counts_as_unknown() -> None:
    metrics = Metrics()

    def crash(request: Any, context: Any) -> Any:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        wrap(metrics, crash)("request", FakeContext())
    assert count(metrics, "StartProcess", "UNKNOWN") == 1


@pytest.mark.parametrize("sent", ["", "two\nlines", "x" * 129, '{"json": 1}'])
def test_an_unusable_request_id_is_replaced(lines: io.StringIO, sent: str) -> None:
    wrap(Metrics(), lambda request, context: None)("request", FakeContext((("x-request-id", sent),)))
    [access] = parsed(lines)
    assert access["request_id"] != sent
    assert len(access["request_id"]) == 32


def test_lines_written_during_the_call_carry_its_context_and_the_caller(lines: io.StringIO) -> None:
    authenticate = recording_caller(lambda authorization, hint, now: Caller("acme", "client-7"))

    def handler(request: Any, context: Any) -> Any:
        logging.getLogger("orchestra.test").info("before authentication")
        authenticate("Bearer x", None, NOW)
        logging.getLogger("orchestra.test").info("after authentication")

    wrap(Metrics(), handler)("request", FakeContext())
    before, after, access = parsed(lines)
    assert before["rpc"] == after["rpc"] == access["rpc"] == "StartProcess"
    assert before["request_id"] == after["request_id"] == access["request_id"]
    assert "tenant" not in before
    assert (after["tenant"], after["consumer"]) == ("acme", "client-7")
    assert (access["tenant"], access["consumer"]) == ("acme", "client-7")


def test_the_authorization_header_never_reaches_the_log(lines: io.StringIO) -> None:
    metrics = Metrics()

    def handler(request: Any, context: FakeContext) -> Any:
        logging.getLogger("orchestra.test").debug("metadata: %s", context.invocation_metadata())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid access token")

    metadata = (("authorization", f"Bearer {SECRET_TOKEN}"), ("x-request-id", "r-1"))
    with pytest.raises(Exception):  # noqa: B017, PT011
        wrap(metrics, handler)({"variables": {"password": "hunter2"}}, FakeContext(metadata))
    output = lines.getvalue()
    assert "r-1" in output
    assert SECRET_TOKEN not in output
    assert "dG9wLXNlY3JldC1zaWduYXR1cmU" not in output
    assert "hunter2" not in output
    assert SECRET_TOKEN not in generate_latest(metrics.registry).decode()


def test_health_checks_are_counted_but_logged_at_debug(lines: io.StringIO) -> None:
    metrics = Metrics()
    wrap(metrics, lambda request, context: None, "/grpc.health.v1.Health/Check")("request", FakeContext())
    assert count(metrics, "Check", "OK") == 1
    [access] = parsed(lines)
    assert access["level"] == "DEBUG"


def test_streaming_handlers_pass_through_untouched() -> None:
    handler = grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))

    class Details(grpc.HandlerCallDetails):
        method = "/grpc.health.v1.Health/Watch"
        invocation_metadata = ()

    assert ObservabilityInterceptor(Metrics()).intercept_service(lambda _d: handler, Details()) is handler


def test_each_known_method_is_wrapped_once_and_unknown_ones_are_not_remembered() -> None:
    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    interceptor = ObservabilityInterceptor(Metrics())
    looked_up: list[str] = []

    def continuation(details: grpc.HandlerCallDetails) -> Any:
        looked_up.append(details.method)
        return handler if details.method == "/orchestra.v1.DiagnosticsService/Ping" else None

    first = interceptor.intercept_service(continuation, Details("/orchestra.v1.DiagnosticsService/Ping"))
    again = interceptor.intercept_service(continuation, Details("/orchestra.v1.DiagnosticsService/Ping"))
    assert first is again
    assert first is not handler
    assert first.unary_unary(b"x", FakeContext()) == b"x"
    for name in ("/made.up/One", "/made.up/One", "/made.up/Two"):
        assert interceptor.intercept_service(continuation, Details(name)) is None
    ping = "/orchestra.v1.DiagnosticsService/Ping"
    assert looked_up == [ping, "/made.up/One", "/made.up/One", "/made.up/Two"]
