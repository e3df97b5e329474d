"""The pure process engine: definition text in, token changes out; it reads no files and keeps no state."""

from orchestra_server.engine.definition import canonical_content, content_hash, load, parse, to_data
from orchestra_server.engine.engine import (
    STEP_LIMIT,
    STEP_LIMIT_MESSAGE,
    TOKEN_LIMIT,
    Step,
    fire_due,
    signal,
    start,
)

__all__ = [
    "STEP_LIMIT",
    "STEP_LIMIT_MESSAGE",
    "TOKEN_LIMIT",
    "Step",
    "canonical_content",
    "content_hash",
    "fire_due",
    "load",
    "parse",
    "signal",
    "start",
    "to_data",
]
