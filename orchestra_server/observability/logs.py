"""Structured logging: one JSON object per line, carrying the context of the call being served."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

# Set by the interceptor for the length of one call; read whenever a line is formatted.
_request: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "orchestra_request", default=None
)

# Attributes a record may carry (the access line passes them as `extra`); others never reach the output,
# so an `extra` holding a request body or a secret cannot leak through this formatter.
CONTEXT_FIELDS = ("request_id", "tenant", "consumer", "rpc", "status", "duration_ms")

# Defence in depth: whatever a message says, a bearer token or a JWT never reaches the log.
_SECRET = re.compile(r"(?i)(bearer\s+)\S+|eyJ[\w-]+\.[\w-]+\.[\w-]*")
REDACTED = "[redacted]"
# Built once: json.dumps with any option builds a new encoder per call.
_encoder = json.JSONEncoder(ensure_ascii=False, default=str)


@dataclass(slots=True)
class RequestInfo:
    """What is known about the call in progress; filled in as it becomes known."""

    request_id: str
    rpc: str
    tenant: str | None = None
    consumer: str | None = None


def current_request() -> RequestInfo | None:
    return _request.get()


def bind_request(info: RequestInfo) -> contextvars.Token[RequestInfo | None]:
    return _request.set(info)


def unbind_request(token: contextvars.Token[RequestInfo | None]) -> None:
    _request.reset(token)


def redact(text: str) -> str:
    # Substring tests first: the regex runs only on the rare line that could hold a token.
    if "eyJ" not in text and "earer" not in text:
        return text
    return _SECRET.sub(lambda m: (m.group(1) or "") + REDACTED, text)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields known for `record`: its own attributes first, then the call in progress."""
    fields: dict[str, Any] = {}
    info = _request.get()
    if info is not None:
        fields["request_id"] = info.request_id
        fields["rpc"] = info.rpc
        if info.tenant is not None:
            fields["tenant"] = info.tenant
        if info.consumer is not None:
            fields["consumer"] = info.consumer
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            fields[name] = value
    return fields


# Lines come many to a second; strftime for each costs more than the rest of the timestamp.
_second_cache: tuple[int, str] = (-1, "")


def rfc3339(created: float) -> str:
    global _second_cache
    seconds = int(created)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "process": record.process,
        }
        payload.update(context_of(record))
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            payload["exc"] = redact(record.exc_text)
        return _encoder.encode(payload)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: the usual line, then the context as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        fields = context_of(record)
        if not fields:
            return line
        # Context goes before any traceback so the first line stays greppable.
        head, sep, rest = line.partition("\n")
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{head} [{pairs}]{sep}{rest}"


def configure_logging(level: str | int = "INFO", json: bool = True, stream: IO[str] | None = None) -> None:
    """Sends every log line to `stream` (stderr by default), replacing the root logger's handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
