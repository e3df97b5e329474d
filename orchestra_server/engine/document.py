"""Definition documents: YAML or JSON text read into plain data, bounded, refusing aliases and repeated keys.

The caller supplies the text (or its bytes) and a source name for messages; nothing here touches
files. What is refused, and why:

* more than `MAX_DOCUMENT_BYTES`, or bytes that are not UTF-8: nothing sensible is that large;
* nesting deeper than `MAX_DEPTH`: a definition is five levels deep, and the YAML composer
  recurses once per level, so thousands of levels would exhaust the interpreter's stack;
* more than `MAX_VALUES` values (scalars, lists and mappings): a megabyte of `[1,1,1,...]` would
  otherwise take the reader most of a minute;
* aliases (`*name`): an alias repeats a subtree without its text, so a few lines can expand to
  billions of nodes ("billion laughs"); a definition has no use for them;
* a key given twice in one mapping: YAML keeps the last silently, so a node declared twice or a
  second `flows:` list would drop the first without a word. Every repeat is named with both lines.

JSON goes through the same reader (JSON is YAML to it), so it gets the same checks.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from orchestra_server.errors import DefinitionInvalid

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Far above the largest valid definition (1,000 nodes and 5,000 flows are about 65,000 values),
# and what keeps reading time bounded: each value costs the pure-Python reader some 60-80 us.
MAX_VALUES = 100_000


def read_document(content: bytes | str, *, source: str) -> Any:
    """The plain data of one YAML or JSON document; DefinitionInvalid (naming `source`) for anything else."""
    if isinstance(content, bytes):
        if len(content) > MAX_DOCUMENT_BYTES:
            raise DefinitionInvalid([f"{source}: larger than {MAX_DOCUMENT_BYTES} bytes"])
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionInvalid([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    else:
        text = content
        if len(text) > MAX_DOCUMENT_BYTES:
            raise DefinitionInvalid([f"{source}: larger than {MAX_DOCUMENT_BYTES} characters"])
    loader: _DocumentLoader | None = None
    try:
        loader = _DocumentLoader(text)
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        problem = f"character #x{exc.character:04x} at position {exc.position} is not allowed"
        raise DefinitionInvalid([f"{source}: not valid YAML or JSON: {problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        raise DefinitionInvalid([f"{source}: not valid YAML or JSON: {_describe(exc)}"]) from None
    except yaml.YAMLError as exc:
        raise DefinitionInvalid([f"{source}: not valid YAML or JSON: {_first_line(str(exc))}"]) from None
    except RecursionError:
        # The depth bound stops the composer long before this; kept so no input can escape as a crash.
        raise DefinitionInvalid([f"{source}: nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise DefinitionInvalid([f"{source}: {duplicate}" for duplicate in loader.duplicates])
    return data


class _DocumentLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting and records repeated mapping keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.values = 0
        self.duplicates: list[str] = []

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(
                None, None, "aliases (*name) are not allowed in a definition", event.start_mark
            )
        self.depth += 1
        self.values += 1
        try:
            if self.values > MAX_VALUES:
                raise ComposerError(
                    None,
                    None,
                    f"more than {MAX_VALUES} values",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            if self.depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, MappingNode):
            first_seen: dict[Any, tuple[int, int]] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first_seen.get(key)
                except TypeError:
                    continue
                mark = key_node.start_mark
                here = (mark.line + 1, mark.column + 1)
                if earlier is None:
                    first_seen[key] = here
                else:
                    # Columns only tell apart two keys on one line, as in one-line JSON.
                    same = here[0] == earlier[0]
                    this, that = (_position(p, same) for p in (here, earlier))
                    self.duplicates.append(f"duplicate key {_show_key(key)} at {this} (first at {that})")
        return super().construct_mapping(node, deep=deep)


def _position(position: tuple[int, int], with_column: bool) -> str:
    return f"line {position[0]} column {position[1]}" if with_column else f"line {position[0]}"


def _show_key(key: object) -> str:
    text = str(key)
    return repr(text) if len(text) <= 64 else repr(text[:61] + "...")


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "unreadable"
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return _first_line(where + what)


def _first_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."
