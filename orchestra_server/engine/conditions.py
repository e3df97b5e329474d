"""CEL expressions over instance variables: compiled once, evaluated without ever raising out uncaught."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cel

from orchestra_server.engine.model import Json

# The CEL parser recurses on nesting; far longer input can overflow its native stack.
MAX_EXPRESSION_LENGTH = 4096
# Converting variables into CEL values recurses too; deeper values are refused, not crashed on.
MAX_VARIABLE_DEPTH = 64

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class ExpressionError(Exception):
    """An expression failed to compile or to evaluate; the message says why, for an incident."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression, or the reason it did not compile (`error`)."""

    source: str
    program: Any
    # Names the expression reads; only these variables are handed to CEL.
    names: tuple[str, ...]
    error: str | None


def compile_expression(source: str) -> Expression:
    """Compile `source`, caching by text; a failure is recorded in the result rather than raised."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        # Not cached: over-long text would otherwise be kept alive by the cache.
        return Expression(
            source[:80], None, (), f"expression is longer than {MAX_EXPRESSION_LENGTH} characters"
        )
    return _compile(source)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    if not source.strip():
        return Expression(source, None, (), "expression is empty")
    try:
        program = cel.compile(source)
        names = tuple(str(name) for name in program.variables())
    except Exception as exc:
        return Expression(source, None, (), _describe(exc))
    return Expression(source, program, names, None)


def evaluate_condition(expression: Expression, variables: Mapping[str, Json]) -> bool:
    """The condition's value, which must be a boolean; anything else raises ExpressionError."""
    result = _execute(expression, variables)
    if not isinstance(result, bool):
        raise ExpressionError(
            f"condition {_quote(expression.source)} gave {_kind(result)}, not a boolean",
        )
    return result


def evaluate_time(expression: Expression, variables: Mapping[str, Json]) -> datetime:
    """The moment an `until` expression names, in UTC: an RFC 3339 string or a CEL timestamp."""
    result = _execute(expression, variables)
    if isinstance(result, str):
        moment = parse_rfc3339(result)
        if moment is None:
            raise ExpressionError(
                f"until {_quote(expression.source)} gave a string that is not an RFC 3339 timestamp",
            )
        return moment
    if isinstance(result, datetime):
        if result.tzinfo is None or result.utcoffset() is None:
            raise ExpressionError(f"until {_quote(expression.source)} gave a time without a time zone")
        return result.astimezone(UTC)
    raise ExpressionError(f"until {_quote(expression.source)} gave {_kind(result)}, not a timestamp")


def parse_rfc3339(text: str) -> datetime | None:
    """A strict RFC 3339 reading (offset required), in UTC; None when the text is not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    normal = text[:10] + "T" + text[11:19]
    if match.group(1):
        normal += match.group(1)[:7]
    offset = match.group(2)
    normal += "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(normal).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _execute(expression: Expression, variables: Mapping[str, Json]) -> object:
    if expression.error is not None:
        raise ExpressionError(f"expression {_quote(expression.source)} does not compile: {expression.error}")
    context: dict[str, Json] = {}
    for name in expression.names:
        if name in variables:
            value = variables[name]
            if not _is_json(value, MAX_VARIABLE_DEPTH):
                raise ExpressionError(
                    f"variable {_quote(name)} is not a JSON value nested at most {MAX_VARIABLE_DEPTH} deep",
                )
            context[name] = value
    try:
        result: object = expression.program.execute(context)
    except Exception as exc:
        raise ExpressionError(f"{_quote(expression.source)} failed: {_describe(exc)}") from None
    except BaseException as exc:
        # The native library reports its own panics as a BaseException; treat them as failures too.
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise ExpressionError(f"{_quote(expression.source)} failed: {_describe(exc)}") from None
    return result


def _is_json(value: object, depth: int) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if depth <= 0:
        return False
    if isinstance(value, list | tuple):
        return all(_is_json(item, depth - 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item, depth - 1) for key, item in value.items())
    return False


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # The library's hints ("Check that the variable is defined...") add nothing for an operator.
    text = text.split(". Check that", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _quote(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {int: "an int", float: "a double", str: "a string", list: "a list", dict: "a map"}.get(
        type(value), f"a {type(value).__name__}"
    )
