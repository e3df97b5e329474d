"""CEL expressions over instance variables: compiled once, evaluated without ever raising out uncaught.

Numbers in conditions. JSON has one number type; CEL has int and double and does no arithmetic
across them (`10 * 1.1` is an error, while comparisons such as `10 > 2.5` do mix). So a
condition is evaluated over doubles: every number in the variables reaches CEL as a double,
and every integer literal in the expression is read as a double (`count + 1 > 5` is
`count + 1.0 > 5.0`), except a literal index such as `items[0]`. `price * 1.1 > 10.5` then
behaves the same for 10, 10.0 and 10.5, and `/` divides exactly (by zero it gives an IEEE
infinity, not an error). A few CEL operations want whole numbers (`%`, an index held in a
variable as in `items[i]`, arithmetic on `size()`): when the double reading fails on them,
the condition is evaluated once more with whole numbers as ints and integer literals as
written, which is how they are meant. When both readings fail, the first reading's error is
the incident's reason. A whole number written as
10.0 is the same value as 10 in either reading. `until` expressions are evaluated as written.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
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


# Whole numbers beyond this are not exact as doubles, so they are never turned into ints.
_EXACT_INTEGER = 2**53


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression, or the reason it did not compile (`error`)."""

    source: str
    program: Any
    # Names the expression reads; only these variables are handed to CEL.
    names: tuple[str, ...]
    error: str | None
    # The expression with its integer literals read as doubles (see the module docstring);
    # None when that reading does not compile (say, an integer map key).
    over_doubles: Any = None


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
    try:
        over_doubles = cel.compile(integer_literals_as_doubles(source))
    except Exception:
        over_doubles = None
    return Expression(source, program, names, None, over_doubles)


def integer_literals_as_doubles(source: str) -> str:
    """`source` with each decimal integer literal written as a double (`5` -> `5.0`).

    String and bytes literals, identifiers, unsigned (`5u`) and hexadecimal literals, and a
    literal that is a whole index (`items[0]`) are left as they are.
    """
    out: list[str] = []
    at = 0
    length = len(source)
    while at < length:
        char = source[at]
        string = _STRING_START.match(source, at)
        if string is not None:
            end = _string_end(source, string.end(), string.group(2), "r" in string.group(1).lower())
            out.append(source[at:end])
            at = end
            continue
        word = _WORD.match(source, at)
        if word is not None:
            out.append(word.group())
            at = word.end()
            continue
        number = _NUMBER.match(source, at)
        if number is not None:
            text = number.group()
            at = number.end()
            if text.isdigit() and not _is_index(source, number.start(), at):
                text += ".0"
            out.append(text)
            continue
        out.append(char)
        at += 1
    return "".join(out)


_STRING_START = re.compile(r"([rRbB]{0,2})(\"\"\"|'''|\"|')")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F]+[uU]?|[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+(?:[eE][+-]?[0-9]+|[uU])?"
)


def _string_end(source: str, at: int, quote: str, raw: bool) -> int:
    while at < len(source):
        if not raw and source[at] == "\\":
            at += 2
            continue
        if source.startswith(quote, at):
            return at + len(quote)
        at += 1
    return len(source)


def _is_index(source: str, start: int, end: int) -> bool:
    """Whether the literal at source[start:end] is all that stands between an index's brackets."""
    before = source[:start].rstrip()
    after = source[end:].lstrip()
    if not before.endswith("[") or not after.startswith("]"):
        return False
    indexed = before[:-1].rstrip()
    # After a value (a name, a call, an index) a bracket indexes; elsewhere it opens a list.
    return bool(indexed) and (indexed[-1].isalnum() or indexed[-1] in "_)]")


def evaluate_condition(expression: Expression, variables: Mapping[str, Json]) -> bool:
    """The condition's value, which must be a boolean; anything else raises ExpressionError.

    Evaluated over doubles first, then as written when that fails (see the module docstring).
    """
    if expression.error is None and expression.over_doubles is not None:
        try:
            result = _run(expression, expression.over_doubles, _context(expression, variables, _as_double))
        except ExpressionError as first:
            try:
                result = _execute(expression, variables)
            except ExpressionError:
                raise first from None
    else:
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
    return _run(expression, expression.program, _context(expression, variables, _whole_as_int))


def _context(
    expression: Expression, variables: Mapping[str, Json], number: Callable[[int | float], int | float]
) -> dict[str, Json]:
    context: dict[str, Json] = {}
    for name in expression.names:
        if name in variables:
            value = variables[name]
            if not _is_json(value, MAX_VARIABLE_DEPTH):
                raise ExpressionError(
                    f"variable {_quote(name)} is not a JSON value nested at most {MAX_VARIABLE_DEPTH} deep",
                )
            context[name] = _numbers(value, number)
    return context


def _numbers(value: Json, number: Callable[[int | float], int | float]) -> Json:
    """`value` with `number` applied to every number in it (booleans are not numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, list | tuple):
        return [_numbers(item, number) for item in value]
    if isinstance(value, dict):
        return {key: _numbers(item, number) for key, item in value.items()}
    return value


def _as_double(value: int | float) -> int | float:
    return float(value) if abs(value) <= _EXACT_INTEGER else value


def _whole_as_int(value: int | float) -> int | float:
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
        and abs(value) <= _EXACT_INTEGER
    ):
        return int(value)
    return value


def _run(expression: Expression, program: Any, context: dict[str, Json]) -> object:
    try:
        result: object = program.execute(context)
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
