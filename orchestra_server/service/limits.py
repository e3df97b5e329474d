"""The published input limits, checked before anything is written."""

from __future__ import annotations

import re
from datetime import timedelta

from orchestra_server.engine.model import Json
from orchestra_server.errors import InvalidArgument, LimitExceeded
from orchestra_server.wire.json_text import dump_json

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_VARIABLE_BYTES = 1024 * 1024  # one value, as compact JSON
MAX_START_VARIABLES_BYTES = 1024 * 1024  # all initial variables of one start together
MAX_VARIABLES_PER_START = 1000
MAX_JSON_DEPTH = 32
MAX_ID_LENGTH = 64
MACHINE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_IDEMPOTENCY_KEY_LENGTH = 200
# A retried start within this time returns the first instance; the scheduler forgets older keys.
IDEMPOTENCY_RETENTION = timedelta(hours=24)


def check_variable_name(name: str) -> None:
    if not VARIABLE_NAME.fullmatch(name):
        raise InvalidArgument(
            "variable name must be a letter or underscore followed by letters, digits or underscores "
            "(at most 128 characters)"
        )


def _depth(value: Json) -> int:
    # Iterative, so hostile nesting cannot exhaust the interpreter stack.
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def encode_value(value: Json, *, limit: int = MAX_VARIABLE_BYTES) -> str:
    """The stored JSON text of a variable value, or LimitExceeded / InvalidArgument."""
    if _depth(value) > MAX_JSON_DEPTH:
        raise LimitExceeded(f"variable value is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = dump_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("variable value is not JSON") from exc
    if len(text.encode()) > limit:
        raise LimitExceeded(f"variable value is larger than {limit} bytes")
    return text


def encode_variables(variables: dict[str, Json]) -> dict[str, str]:
    if len(variables) > MAX_VARIABLES_PER_START:
        raise LimitExceeded(f"more than {MAX_VARIABLES_PER_START} variables")
    encoded: dict[str, str] = {}
    total = 0
    for name, value in variables.items():
        check_variable_name(name)
        encoded[name] = encode_value(value)
        total += len(encoded[name])
    if total > MAX_START_VARIABLES_BYTES:
        raise LimitExceeded(f"variables are larger than {MAX_START_VARIABLES_BYTES} bytes together")
    return encoded


def is_plausible_id(value: str) -> bool:
    """Ids are short printable ASCII; anything else cannot name a stored row."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()
