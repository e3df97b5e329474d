"""The pure process engine: definitions in, token changes out, with no I/O."""

from orchestra_server.engine.definition import canonical_content, content_hash, load_file, parse, to_data
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
    "load_file",
    "parse",
    "signal",
    "start",
    "to_data",
]
