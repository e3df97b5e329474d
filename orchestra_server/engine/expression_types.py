"""What a CEL expression's text alone shows about the type of its result.

The CEL library compiles and runs expressions but exposes no syntax tree or type checker, so
this module reads the text with a small parser of CEL's grammar and infers the set of kinds the
result can have. It knows literals, operators and the standard functions; a variable, a field, an
index, or anything it does not know could be of any kind. So `amount > 1000` is a boolean,
`amount * 2` is a number whatever `amount` holds, and `approved` or `order.total` could be
anything and passes. Text it cannot read is treated as "any kind": the compiler has the last
word on syntax, and nothing is refused on a guess.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Kind(StrEnum):
    BOOL = "a boolean"
    INT = "an int"
    UINT = "a uint"
    DOUBLE = "a double"
    STRING = "a string"
    BYTES = "bytes"
    NULL = "null"
    LIST = "a list"
    MAP = "a map"
    TIMESTAMP = "a timestamp"
    DURATION = "a duration"
    TYPE = "a type"


ANY = frozenset(Kind)
_NUMBERS = frozenset({Kind.INT, Kind.UINT, Kind.DOUBLE})
_BOOL = frozenset({Kind.BOOL})
_PLUS = _NUMBERS | {Kind.STRING, Kind.BYTES, Kind.LIST, Kind.TIMESTAMP, Kind.DURATION}
_MINUS = _NUMBERS | {Kind.TIMESTAMP, Kind.DURATION}
_FUNCTIONS: dict[str, frozenset[Kind]] = {
    "size": frozenset({Kind.INT}),
    "int": frozenset({Kind.INT}),
    "uint": frozenset({Kind.UINT}),
    "double": frozenset({Kind.DOUBLE}),
    "string": frozenset({Kind.STRING}),
    "bytes": frozenset({Kind.BYTES}),
    "bool": _BOOL,
    "timestamp": frozenset({Kind.TIMESTAMP}),
    "duration": frozenset({Kind.DURATION}),
    "type": frozenset({Kind.TYPE}),
    "has": _BOOL,
    "contains": _BOOL,
    "startsWith": _BOOL,
    "endsWith": _BOOL,
    "matches": _BOOL,
    "exists": _BOOL,
    "all": _BOOL,
    "exists_one": _BOOL,
    "map": frozenset({Kind.LIST}),
    "filter": frozenset({Kind.LIST}),
    **{
        name: frozenset({Kind.INT})
        for name in (
            "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
            "getHours", "getMinutes", "getSeconds", "getMilliseconds",
        )
    },
}  # fmt: skip

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
        |[bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
        |'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
  | (?P<double>(?:[0-9]+\.[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)
  | (?P<uint>(?:0[xX][0-9a-fA-F]+|[0-9]+)[uU])
  | (?P<int>0[xX][0-9a-fA-F]+|[0-9]+)
  | (?P<name>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[<>!+\-*/%?:.,\[\](){}])
    """,
    re.VERBOSE | re.DOTALL,
)
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})


class _Unreadable(Exception):
    """The text is outside what this reader understands."""


def result_kinds(source: str) -> frozenset[Kind]:
    """The kinds the expression's value can have; every kind when the text does not say."""
    try:
        tokens = _tokens(source)
        reader = _Reader(tokens)
        kinds = reader.expression()
        if reader.position != len(tokens):
            return ANY
        return kinds
    except (_Unreadable, RecursionError):
        return ANY


def describe(kinds: frozenset[Kind]) -> str:
    """`kinds` in words, for a message: 'a number, a string or a list'."""
    words = ["a number"] if kinds & _NUMBERS else []
    words += [kind.value for kind in Kind if kind in kinds and kind not in _NUMBERS]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.lastgroup is None:
            raise _Unreadable
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
    return tokens


class _Reader:
    """Recursive descent over CEL's grammar, returning kinds instead of a tree."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        if self.position < len(self.tokens):
            kind, text = self.tokens[self.position]
            return text if kind in ("op", "name") else kind
        return None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise _Unreadable
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise _Unreadable
        self.position += 1
        return token

    def expression(self) -> frozenset[Kind]:
        kinds = self.disjunction()
        if self.peek() == "?":
            self.take()
            then = self.disjunction()
            self.take(":")
            return then | self.expression()
        return kinds

    def disjunction(self) -> frozenset[Kind]:
        kinds = self.conjunction()
        while self.peek() == "||":
            self.take()
            self.conjunction()
            kinds = _BOOL
        return kinds

    def conjunction(self) -> frozenset[Kind]:
        kinds = self.relation()
        while self.peek() == "&&":
            self.take()
            self.relation()
            kinds = _BOOL
        return kinds

    def relation(self) -> frozenset[Kind]:
        kinds = self.addition()
        while self.peek() in _RELATIONS:
            self.take()
            self.addition()
            kinds = _BOOL
        return kinds

    def addition(self) -> frozenset[Kind]:
        kinds = self.multiplication()
        while self.peek() in ("+", "-"):
            operator = self.take()[1]
            self.multiplication()
            kinds = _PLUS if operator == "+" else _MINUS
        return kinds

    def multiplication(self) -> frozenset[Kind]:
        kinds = self.unary()
        while self.peek() in ("*", "/", "%"):
            self.take()
            self.unary()
            kinds = _NUMBERS
        return kinds

    def unary(self) -> frozenset[Kind]:
        if self.peek() == "!":
            self.take()
            self.unary()
            return _BOOL
        if self.peek() == "-":
            self.take()
            self.unary()
            return frozenset({Kind.INT, Kind.DOUBLE})
        return self.member()

    def member(self) -> frozenset[Kind]:
        kinds = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "name":
                    raise _Unreadable
                if self.peek() == "(":
                    self.arguments(")")
                    kinds = _FUNCTIONS.get(name, ANY)
                else:
                    kinds = ANY
            else:
                self.expression()
                self.take("]")
                kinds = ANY
        return kinds

    def primary(self) -> frozenset[Kind]:
        kind, text = self.take()
        if kind == "op":
            if text == ".":
                return self.primary()
            if text == "(":
                kinds = self.expression()
                self.take(")")
                return kinds
            if text == "[":
                self.arguments("]", opened=True)
                return frozenset({Kind.LIST})
            if text == "{":
                self.entries()
                return frozenset({Kind.MAP})
            raise _Unreadable
        if kind == "name":
            if text in ("true", "false"):
                return _BOOL
            if text == "null":
                return frozenset({Kind.NULL})
            if text == "in":
                raise _Unreadable
            if self.peek() == "(":
                self.arguments(")")
                return _FUNCTIONS.get(text, ANY)
            if self.peek() == "{":
                # A message literal: its type is a message, which this reader does not model.
                self.take("{")
                self.entries()
            return ANY
        if kind == "string":
            prefix = text[: len(text) - len(text.lstrip("rRbB"))]
            return frozenset({Kind.BYTES if "b" in prefix.lower() else Kind.STRING})
        return frozenset({{"double": Kind.DOUBLE, "uint": Kind.UINT, "int": Kind.INT}[kind]})

    def arguments(self, closing: str, *, opened: bool = False) -> None:
        if not opened:
            self.take("(")
        while self.peek() != closing:
            self.expression()
            if self.peek() == ",":
                self.take()
            elif self.peek() != closing:
                raise _Unreadable
        self.take(closing)

    def entries(self) -> None:
        """Key-value pairs up to the closing brace; the opening one is already taken."""
        while self.peek() != "}":
            self.expression()
            self.take(":")
            self.expression()
            if self.peek() == ",":
                self.take()
            elif self.peek() != "}":
                raise _Unreadable
        self.take("}")
