"""The published input limits, checked before anything is written."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import cast

from orchestra_server.engine.model import Json
from orchestra_server.errors import InvalidArgument, LimitExceeded
from orchestra_server.wire.json_text import dump_json

# Re-exported: the service's checks and its callers read every published limit from here.
from orchestra_server.wire.limits import MAX_EXACT_INTEGER as MAX_EXACT_INTEGER
from orchestra_server.wire.limits import MAX_INSTANCE_VARIABLES_BYTES as MAX_INSTANCE_VARIABLES_BYTES
from orchestra_server.wire.limits import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from orchestra_server.wire.limits import MAX_REQUEST_BYTES as MAX_REQUEST_BYTES
from orchestra_server.wire.limits import MAX_START_VARIABLES_BYTES as MAX_START_VARIABLES_BYTES
from orchestra_server.wire.limits import MAX_VARIABLE_BYTES as MAX_VARIABLE_BYTES

# The limits on values (sizes, depth, integer range) are defined in wire.limits, beside the
# message sizes derived from them; the rest are the service's own.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_VARIABLES_PER_START = 1000
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


def _scan(value: Json) -> tuple[int, bool]:
    """The value's depth as defined above (counting stops past the limit), and whether it
    holds an integral number beyond MAX_EXACT_INTEGER."""
    # Level by level without recursion, so hostile nesting cannot exhaust the interpreter
    # stack, and with the common exact types first: a 1 MiB array takes a fraction of a second.
    depth, level, inexact = 0, [value], False
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        below: list[Json] = []
        for item in level:
            kind = type(item)
            if kind is str:
                continue
            if kind is list:
                below.extend(cast(list[Json], item))
            elif kind is dict:
                below.extend(cast(dict[str, Json], item).values())
            elif kind is int:
                if not -MAX_EXACT_INTEGER <= cast(int, item) <= MAX_EXACT_INTEGER:
                    inexact = True
            elif kind is float:
                if not -MAX_EXACT_INTEGER <= cast(float, item) <= MAX_EXACT_INTEGER:
                    inexact = inexact or not _is_exact(cast(float, item))
            elif isinstance(item, list | tuple):
                below.extend(item)
            elif isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, int | float) and not isinstance(item, bool):
                inexact = inexact or not _is_exact(item)
        level = below
    return (depth + 1 if level else depth), inexact


def _is_exact(number: int | float) -> bool:
    # A fraction is as exact as a double can be; NaN and infinities are refused as not JSON.
    return -MAX_EXACT_INTEGER <= number <= MAX_EXACT_INTEGER or (
        isinstance(number, float) and not number.is_integer()
    )


def json_depth(value: Json) -> int:
    """The depth defined above; counting stops past the limit."""
    return _scan(value)[0]


def _check_value(name: str, value: Json) -> None:
    depth, inexact = _scan(value)
    if depth > MAX_JSON_DEPTH:
        raise LimitExceeded(f"variable {name} is nested deeper than {MAX_JSON_DEPTH} levels")
    if inexact:
        raise LimitExceeded(
            f"variable {name} holds an integer beyond +/-{MAX_EXACT_INTEGER} (2^53 - 1), "
            "which a JSON number cannot carry exactly; send it as a string"
        )


def encode_value(name: str, value: Json) -> str:
    """The stored JSON text of variable `name` (a checked name), or LimitExceeded / InvalidArgument."""
    _check_value(name, value)
    try:
        text = dump_json(value)
        size = len(text.encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) included
        raise InvalidArgument(f"variable {name} is not JSON") from exc
    if size > MAX_VARIABLE_BYTES:
        raise LimitExceeded(f"variable {name} is larger than {MAX_VARIABLE_BYTES} bytes as JSON")
    return text


def encode_variables(variables: dict[str, Json]) -> dict[str, str]:
    """The stored JSON texts of one start's initial variables, within every limit that applies."""
    if len(variables) > MAX_VARIABLES_PER_START:
        raise LimitExceeded(f"more than {MAX_VARIABLES_PER_START} variables")
    encoded: dict[str, str] = {}
    for name, value in variables.items():
        check_variable_name(name)
        encoded[name] = encode_value(name, value)
    if sum(len(text.encode()) for text in encoded.values()) > MAX_START_VARIABLES_BYTES:
        raise LimitExceeded(f"variables are larger than {MAX_START_VARIABLES_BYTES} bytes together")
    check_instance_variables(
        len(encoded), sum(len(name) + len(text.encode()) for name, text in encoded.items())
    )
    return encoded


def variables_json_bytes(count: int, names_and_values: int) -> int:
    """Bytes of the compact JSON object {"name":value,...} of `count` variables whose names and
    values take `names_and_values` bytes together."""
    # Each entry adds `"`, `":` and, between entries, `,`; the object adds `{` and `}`.
    return 2 + names_and_values + 3 * count + max(count - 1, 0)


def check_instance_variables(count: int, names_and_values: int) -> None:
    """Refuses a write after which one instance's variables would exceed their published total."""
    if variables_json_bytes(count, names_and_values) > MAX_INSTANCE_VARIABLES_BYTES:
        raise LimitExceeded(
            f"the variables of one instance are limited to {MAX_INSTANCE_VARIABLES_BYTES} bytes "
            "together as JSON"
        )


def is_plausible_id(value: str) -> bool:
    """Ids are short printable ASCII; anything else cannot name a stored row."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()
