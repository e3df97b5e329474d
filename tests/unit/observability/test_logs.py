"""The log formatters: one JSON object per line, the call's context on every line, no secrets."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from orchestra_server.observability.logs import (
    REDACTED,
    JsonFormatter,
    RequestInfo,
    TextFormatter,
    bind_request,
    configure_logging,
    redact,
    unbind_request,
)

RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.c2lnbmF0dXJlLXRleHQ"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("orchestra.test", logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


@pytest.fixture
def in_call() -> Iterator[RequestInfo]:
    info = RequestInfo("req-1", "StartProcess", tenant="acme", consumer="client-7")
    token = bind_request(info)
    try:
        yield info
    finally:
        unbind_request(token)


def test_a_line_outside_any_call_has_the_base_fields_only() -> None:
    line = JsonFormatter().format(record("started %d workers", 3))
    payload = json.loads(line)
    assert set(payload) == {"ts", "level", "logger", "msg", "process"}
    assert RFC3339_UTC.fullmatch(payload["ts"])
    assert payload["level"] == "INFO"
    assert payload["logger"] == "orchestra.test"
    assert payload["msg"] == "started 3 workers"
    assert isinstance(payload["process"], int)
    assert "\n" not in line


def test_a_line_inside_a_call_carries_its_context(in_call: RequestInfo) -> None:
    payload = json.loads(JsonFormatter().format(record("working")))
    assert payload["request_id"] == "req-1"
    assert payload["rpc"] == "StartProcess"
    assert payload["tenant"] == "acme"
    assert payload["consumer"] == "client-7"


def test_context_learnt_during_the_call_shows_on_later_lines() -> None:
    info = RequestInfo("req-2", "GetInstance")
    token = bind_request(info)
    try:
        before = json.loads(JsonFormatter().format(record("before")))
        info.tenant, info.consumer = "globex", "client-9"
        after = json.loads(JsonFormatter().format(record("after")))
    finally:
        unbind_request(token)
    assert "tenant" not in before
    assert (after["tenant"], after["consumer"]) == ("globex", "client-9")


def test_access_fields_come_from_the_record(in_call: RequestInfo) -> None:
    payload = json.loads(JsonFormatter().format(record("done", status="NOT_FOUND", duration_ms=1.25)))
    assert payload["status"] == "NOT_FOUND"
    assert payload["duration_ms"] == 1.25


def test_unknown_extra_attributes_are_never_written() -> None:
    payload = json.loads(JsonFormatter().format(record("x", body="secret body", authorization="Bearer t")))
    assert "body" not in payload
    assert "secret body" not in json.dumps(payload)


@pytest.mark.parametrize(
    "message",
    [f"authorization: Bearer {JWT}", f"token={JWT}", "Authorization: bearer opaque-token-text"],
)
def test_bearer_tokens_and_jwts_are_redacted(message: str) -> None:
    line = JsonFormatter().format(record("%s", message))
    assert JWT not in line
    assert "c2lnbmF0dXJlLXRleHQ" not in line
    assert "opaque-token-text" not in line
    assert REDACTED in line


def test_redaction_leaves_ordinary_text_alone() -> None:
    assert redact("instance 42 completed") == "instance 42 completed"


def test_a_traceback_is_included_and_redacted() -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        made = logging.LogRecord("orchestra.test", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        made.exc_info = sys.exc_info()
    payload = json.loads(JsonFormatter().format(made))
    assert "ValueError" in payload["exc"]
    assert JWT not in payload["exc"]


def test_text_format_puts_the_context_on_the_first_line(in_call: RequestInfo) -> None:
    line = TextFormatter().format(record("working"))
    assert line.endswith("[request_id=req-1 rpc=StartProcess tenant=acme consumer=client-7]")
    assert "INFO orchestra.test: working" in line


def test_configure_logging_writes_json_lines_to_the_stream() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("DEBUG", json=True, stream=stream)
        logging.getLogger("orchestra.test").debug("one")
        logging.getLogger("orchestra.test").info("two")
        logging.getLogger("alembic.runtime").info("quiet")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.getLogger("alembic").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["msg"]) for line in lines] == [("DEBUG", "one"), ("INFO", "two")]
