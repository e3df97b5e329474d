"""Reading process definitions: YAML/JSON text validated into a `Definition`, and its canonical form.

`load` takes the text (the caller reads files) and `parse` the plain data. Validation collects
every problem, each naming the source and the node or flow. Beyond the structure (known fields,
existing nodes, one start, no dead ends, everything reachable), a definition is refused for what
can be known before it runs (see `soundness` for the graph rules and `expression_types` for the
types):

* a condition that cannot give a boolean (`'yes'`, `amount * 2`, `1`), or an `until` that cannot
  give a time (`true`, `3600`, `'tomorrow'`);
* a condition without variables that is false, or fails whenever it runs;
* a flow that can never be taken, two flows with the same from, to and condition, more than one
  default flow on a node, a default flow with a condition;
* a `wait_all` or `threshold` join whose incoming flows can never be filled together.

Definitions stored by earlier releases are read with `strict=False`, which keeps the structural
checks and skips these, so instances already running on them keep running.

The canonical form is `to_data` of the parsed definition, as compact JSON with sorted keys: it is
what is stored and hashed, so comments, key order, spelling (`PT60M` or `PT1H`) and a gateway
preset against its explicit split and join all give the same version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from orchestra_server.engine import expression_types, soundness
from orchestra_server.engine.conditions import (
    Expression,
    ExpressionError,
    compile_expression,
    evaluate_condition,
    evaluate_time,
)
from orchestra_server.engine.document import read_document
from orchestra_server.engine.durations import Duration, DurationError, format_duration, parse_duration
from orchestra_server.engine.model import Definition, Flow, Join, Node, NodeType, Split, Timeout
from orchestra_server.engine.plan import plan_for
from orchestra_server.errors import DefinitionInvalid

_MACHINE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Deploy-time bounds that keep per-definition precomputation cheap.
MAX_NODES = 1000
MAX_FLOWS = 5000
# Beyond this many problems the rest are counted, not listed.
MAX_PROBLEMS = 50

_TOP_FIELDS = ("id", "label", "nodes", "flows")
_COMMON_FIELDS = ("type", "label", "split", "join", "threshold")
_TYPE_FIELDS: Mapping[NodeType, tuple[str, ...]] = {
    NodeType.START: (),
    NodeType.END: (),
    NodeType.PASSTHROUGH: (),
    NodeType.WAIT: ("timeout",),
    NodeType.TIMER: ("after", "until"),
    NodeType.GATEWAY: ("gateway",),
}
_FLOW_FIELDS = ("from", "to", "when", "default")
_TIMEOUT_FIELDS = ("after", "to")
# What each kind of expression must be able to give, and how a message names it.
_WANTED: Mapping[str, tuple[frozenset[expression_types.Kind], str]] = {
    "when": (frozenset({expression_types.Kind.BOOL}), "a boolean"),
    "until": (
        frozenset({expression_types.Kind.STRING, expression_types.Kind.TIMESTAMP}),
        "a time (an RFC 3339 string or a timestamp)",
    ),
}
_GATEWAYS: Mapping[str, tuple[Join, Split]] = {
    "exclusive": (Join.IMMEDIATE, Split.FIRST),
    "parallel": (Join.WAIT_ALL, Split.ALL),
    "inclusive": (Join.INCLUSIVE, Split.ALL),
}


def parse(data: object, *, source: str, strict: bool = True) -> Definition:
    """Validate plain data; raise DefinitionInvalid listing every problem, each naming `source`."""
    return _Reader(source, strict).read(data)


def load(content: bytes | str, *, source: str, strict: bool = True) -> Definition:
    """Read and validate one definition document, YAML or JSON; `source` names it in every problem."""
    return parse(read_document(content, source=source), source=source, strict=strict)


def to_data(definition: Definition) -> dict[str, Any]:
    """The definition in normal form: `parse` reads it back to an equal Definition."""
    nodes: dict[str, Any] = {}
    for node in definition.nodes.values():
        entry: dict[str, Any] = {"type": node.type.value}
        if node.label is not None:
            entry["label"] = node.label
        if node.split is not Split.ALL:
            entry["split"] = node.split.value
        if node.join is not Join.IMMEDIATE:
            entry["join"] = node.join.value
        if node.threshold is not None:
            entry["threshold"] = node.threshold
        if node.after is not None:
            entry["after"] = format_duration(node.after)
        if node.until is not None:
            entry["until"] = node.until
        if node.timeout is not None:
            entry["timeout"] = {"after": format_duration(node.timeout.after), "to": node.timeout.to}
        nodes[node.id] = entry
    flows: list[dict[str, Any]] = []
    for flow in definition.flows:
        if not flow.timeout:
            item: dict[str, Any] = {"from": flow.source, "to": flow.target}
            if flow.when is not None:
                item["when"] = flow.when
            if flow.default:
                item["default"] = True
            flows.append(item)
    data: dict[str, Any] = {"id": definition.id, "nodes": nodes, "flows": flows}
    if definition.label is not None:
        data["label"] = definition.label
    return data


def canonical_content(definition: Definition) -> str:
    """The normal form as compact JSON with sorted keys: equal text means the same definition."""
    return json.dumps(to_data(definition), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(definition: Definition) -> str:
    """SHA-256 (hex) of `canonical_content`: what tells one version from the next."""
    return hashlib.sha256(canonical_content(definition).encode("utf-8")).hexdigest()


def _show(value: object) -> str:
    """Echo a value from the input, bounded, so a message never grows with garbage."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 64 else repr(value[:61] + "...")
    return f"a {type(value).__name__} value"


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


class _Reader:
    """One validation run: collects problems instead of stopping at the first."""

    def __init__(self, source: str, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.problems: list[str] = []
        # Conditions without variables, by text, and their value.
        self.constants: dict[str, bool] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}{message}")

    def read(self, data: object) -> Definition:
        if not isinstance(data, Mapping):
            self.problem("", "a definition must be a mapping with id, nodes and flows")
            self.fail()
        for key in data:
            if key not in _TOP_FIELDS:
                self.problem("", f"unknown field {_show(key)} (expected id, label, nodes, flows)")
        definition_id = self.machine_name(data.get("id"), "", "definition id")
        label = self.label(data, "")
        known, nodes = self.nodes(data.get("nodes"), "nodes" in data)
        flows, flows_sound = self.flows(data.get("flows"), "flows" in data, known)
        if len(flows) > MAX_FLOWS:
            self.problem("", f"too many flows ({len(flows)}; at most {MAX_FLOWS})")
            self.fail()
        for node in nodes.values():
            if node.timeout is not None and node.timeout.to in known:
                flows.append(Flow(len(flows), node.id, node.timeout.to, None, timeout=True))
        starts = [name for name, kind in known.items() if kind is NodeType.START]
        if known and not starts:
            self.problem("", "there is no start node")
        if len(starts) > 1:
            self.problem(
                "", f"there are {len(starts)} start nodes ({', '.join(starts)}); exactly one is needed"
            )
        outgoing: dict[str, list[Flow]] = {name: [] for name in known}
        incoming: dict[str, list[Flow]] = {name: [] for name in known}
        for flow in flows:
            outgoing[flow.source].append(flow)
            incoming[flow.target].append(flow)
        self.graph(known, nodes, outgoing, incoming, flows_sound)
        if flows_sound and len(starts) == 1:
            self.reachability(starts[0], known, outgoing)
        if self.strict and not self.problems:
            found = soundness.routing_problems(nodes, outgoing, self.constant)
            found += soundness.join_problems(nodes, outgoing, incoming)
            for where, message in found:
                self.problem(where, message)
        if self.problems or definition_id is None:
            self.fail()
        definition = Definition(
            id=definition_id,
            label=label,
            nodes=dict(nodes),
            flows=tuple(flows),
            start_node=starts[0],
            outgoing={name: tuple(items) for name, items in outgoing.items()},
            incoming={name: tuple(items) for name, items in incoming.items()},
        )
        plan_for(definition)
        return definition

    def fail(self) -> NoReturn:
        problems = self.problems[:MAX_PROBLEMS]
        if len(self.problems) > MAX_PROBLEMS:
            problems.append(f"{self.source}: and {len(self.problems) - MAX_PROBLEMS} more problems")
        raise DefinitionInvalid(problems)

    def machine_name(self, value: object, where: str, what: str) -> str | None:
        if value is None:
            self.problem(where, f"the {what} is missing")
        elif not isinstance(value, str) or _MACHINE_NAME.fullmatch(value) is None:
            self.problem(
                where,
                f"the {what} {_show(value)} is not a machine name "
                "(a lowercase letter, then up to 63 lowercase letters, digits or underscores)",
            )
        else:
            return value
        return None

    def label(self, data: Mapping[Any, Any], where: str) -> str | None:
        label = data.get("label")
        if label is not None and not isinstance(label, str):
            self.problem(where, f"label must be a string, not {_show(label)}")
            return None
        return label

    def nodes(self, raw: object, present: bool) -> tuple[dict[str, NodeType | None], dict[str, Node]]:
        """Node id -> type (None when unreadable) for every named node, and the nodes that are valid."""
        known: dict[str, NodeType | None] = {}
        nodes: dict[str, Node] = {}
        if not present:
            self.problem("", "nodes are missing")
            return known, nodes
        if not isinstance(raw, Mapping) or not raw:
            self.problem("", "nodes must be a non-empty mapping of node id to node")
            return known, nodes
        if len(raw) > MAX_NODES:
            self.problem("", f"too many nodes ({len(raw)}; at most {MAX_NODES})")
            self.fail()
        for key, value in raw.items():
            name = self.machine_name(key, "", "node id")
            if name is None:
                continue
            node_type, node = self.node(name, value)
            known[name] = node_type
            if node is not None:
                nodes[name] = node
        return known, nodes

    def node(self, name: str, raw: object) -> tuple[NodeType | None, Node | None]:
        where = f"node {name!r}: "
        if not isinstance(raw, Mapping):
            self.problem(where, f"a node must be a mapping with a type, not {_show(raw)}")
            return None, None
        before = len(self.problems)
        kind = raw.get("type")
        try:
            node_type = NodeType(kind) if isinstance(kind, str) else None
        except ValueError:
            node_type = None
        if node_type is None:
            expected = ", ".join(t.value for t in NodeType)
            self.problem(
                where, f"type {_show(kind) if kind is not None else 'is missing'}: expected one of {expected}"
            )
            for key in raw:
                if key not in (*_COMMON_FIELDS, "timeout", "after", "until", "gateway"):
                    self.problem(where, f"unknown field {_show(key)}")
            return None, None
        allowed = _COMMON_FIELDS + _TYPE_FIELDS[node_type]
        for key in raw:
            if key not in allowed:
                belongs = [t.value for t, fields in _TYPE_FIELDS.items() if key in fields]
                hint = f" (only {' and '.join(belongs)} nodes have it)" if belongs else ""
                self.problem(where, f"field {_show(key)} does not belong on a {node_type.value} node{hint}")
        label = self.label(raw, where)
        split = self.choice(raw, "split", Split, where)
        join = self.choice(raw, "join", Join, where)
        if node_type is NodeType.GATEWAY and "gateway" in raw:
            preset = _GATEWAYS.get(raw["gateway"]) if isinstance(raw["gateway"], str) else None
            if preset is None:
                self.problem(
                    where, f"gateway {_show(raw['gateway'])}: expected one of {', '.join(_GATEWAYS)}"
                )
            else:
                if join is not None and join is not preset[0]:
                    self.problem(where, f"join {join.value!r} contradicts gateway {raw['gateway']!r}")
                if split is not None and split is not preset[1]:
                    self.problem(where, f"split {split.value!r} contradicts gateway {raw['gateway']!r}")
                join, split = preset
        threshold = raw.get("threshold")
        if join is Join.THRESHOLD:
            if threshold is None:
                self.problem(
                    where, "join 'threshold' needs a threshold (how many incoming flows must arrive)"
                )
            elif not isinstance(threshold, int) or isinstance(threshold, bool):
                self.problem(where, f"threshold must be a whole number, not {_show(threshold)}")
                threshold = None
        elif threshold is not None:
            self.problem(where, "threshold is only meaningful with join 'threshold'")
            threshold = None
        after = until = timeout = None
        if node_type is NodeType.TIMER:
            if ("after" in raw) == ("until" in raw):
                self.problem(
                    where, "a timer needs exactly one of after (a duration) and until (an expression)"
                )
            if "after" in raw:
                after = self.duration(raw["after"], where, "after")
            if "until" in raw:
                until = self.expression(raw["until"], where, "until")
        if node_type is NodeType.WAIT and "timeout" in raw:
            timeout = self.timeout(raw["timeout"], where)
        if len(self.problems) > before:
            return node_type, None
        return node_type, Node(
            id=name,
            type=node_type,
            label=label,
            split=split or Split.ALL,
            join=join or Join.IMMEDIATE,
            threshold=threshold,
            after=after,
            until=until,
            timeout=timeout,
        )

    def choice(self, raw: Mapping[Any, Any], key: str, enum: type[Split] | type[Join], where: str) -> Any:
        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, str) and value in enum._value2member_map_:
            return enum(value)
        self.problem(where, f"{key} {_show(value)}: expected one of {', '.join(m.value for m in enum)}")
        return None

    def duration(self, value: object, where: str, what: str) -> Duration | None:
        if not isinstance(value, str):
            self.problem(where, f"{what} must be a duration string such as PT1H, not {_show(value)}")
            return None
        try:
            return parse_duration(value)
        except DurationError as exc:
            self.problem(where, f"{what} {_show(value)}: {exc}")
            return None

    def expression(self, value: object, where: str, what: str) -> str | None:
        if not isinstance(value, str):
            self.problem(where, f"{what} must be a CEL expression string, not {_show(value)}")
            return None
        compiled = compile_expression(value)
        if compiled.error is not None:
            self.problem(where, f"{what} {_show(value)} does not compile: {compiled.error}")
            return None
        if self.strict:
            self.check_type(compiled, where, what)
        return value

    def check_type(self, compiled: Expression, where: str, what: str) -> None:
        """Refuse what the text shows cannot work; a variable-free expression is run once to know."""
        kinds = expression_types.result_kinds(compiled.source)
        wanted, needed = _WANTED[what]
        if not kinds & wanted:
            self.problem(
                where,
                f"{what} {_show(compiled.source)} cannot give {needed}: "
                f"it gives {expression_types.describe(kinds)}",
            )
            return
        if compiled.names:
            return
        try:
            if what == "when":
                self.constants[compiled.source] = evaluate_condition(compiled, {})
            else:
                evaluate_time(compiled, {})
        except ExpressionError as exc:
            self.problem(where, f"{what} {_show(compiled.source)} fails whenever it runs: {exc}")

    def constant(self, flow: Flow) -> bool | None:
        """A flow condition's value when it has no variables; None when it depends on them."""
        return self.constants.get(flow.when) if flow.when is not None else None

    def timeout(self, raw: object, where: str) -> Timeout | None:
        if not isinstance(raw, Mapping):
            self.problem(where, f"timeout must be a mapping with after and to, not {_show(raw)}")
            return None
        for key in raw:
            if key not in _TIMEOUT_FIELDS:
                self.problem(where, f"timeout: unknown field {_show(key)} (expected after, to)")
        after = self.duration(raw.get("after"), where, "timeout after") if "after" in raw else None
        if "after" not in raw:
            self.problem(where, "timeout needs after (a duration)")
        target = raw.get("to")
        if not isinstance(target, str):
            self.problem(where, f"timeout needs to (a node id), not {_show(target)}")
        if after is None or not isinstance(target, str):
            return None
        return Timeout(after=after, to=target)

    def flows(
        self, raw: object, present: bool, known: Mapping[str, NodeType | None]
    ) -> tuple[list[Flow], bool]:
        """The valid declared flows, and whether every declared flow was valid."""
        flows: list[Flow] = []
        if not present:
            self.problem("", "flows are missing")
            return flows, False
        if not _is_sequence(raw):
            self.problem("", f"flows must be a list, not {_show(raw)}")
            return flows, False
        assert isinstance(raw, Sequence)
        sound = True
        for number, item in enumerate(raw, start=1):
            if not isinstance(item, Mapping):
                self.problem(
                    f"flow #{number}: ", f"a flow must be a mapping with from and to, not {_show(item)}"
                )
                sound = False
                continue
            source, target = item.get("from"), item.get("to")
            ends = " -> ".join(end[:64] if isinstance(end, str) else "?" for end in (source, target))
            where = f"flow #{number} ({ends}): "
            before = len(self.problems)
            for key in item:
                if key not in _FLOW_FIELDS:
                    self.problem(where, f"unknown field {_show(key)} (expected from, to, when, default)")
            for end, value in (("source", source), ("target", target)):
                field_name = "from" if end == "source" else "to"
                if value is None:
                    self.problem(where, f"{field_name} is missing")
                elif not isinstance(value, str):
                    self.problem(where, f"{field_name} must be a node id, not {_show(value)}")
                elif value not in known:
                    self.problem(where, f"{end} node {_show(value)} does not exist")
            when = self.expression(item["when"], where, "when") if "when" in item else None
            default = item.get("default", False)
            if not isinstance(default, bool):
                self.problem(where, f"default must be true or false, not {_show(default)}")
            elif default and "when" in item:
                self.problem(
                    where, "a default flow may not have a condition: it is taken when no other flow is"
                )
            if len(self.problems) > before:
                sound = False
                continue
            assert isinstance(source, str)
            assert isinstance(target, str)
            flows.append(Flow(len(flows), source, target, when, default=default is True))
        return flows, sound

    def graph(
        self,
        known: Mapping[str, NodeType | None],
        nodes: Mapping[str, Node],
        outgoing: Mapping[str, list[Flow]],
        incoming: Mapping[str, list[Flow]],
        flows_sound: bool,
    ) -> None:
        for name, node_type in known.items():
            where = f"node {name!r}: "
            if node_type is NodeType.START and incoming[name]:
                self.problem(
                    where, f"a start node may have no incoming flows ({len(incoming[name])} lead here)"
                )
            if node_type is NodeType.END and outgoing[name]:
                self.problem(where, "an end node may have no outgoing flows")
            # A broken flow would make its source look like a dead end; that problem is already reported.
            if (
                flows_sound
                and node_type is not None
                and node_type is not NodeType.END
                and not any(not flow.timeout for flow in outgoing[name])
            ):
                self.problem(where, "dead end: no outgoing flow (only end nodes may stop)")
            node = nodes.get(name)
            if node is None:
                continue
            if node.timeout is not None and node.timeout.to not in known:
                self.problem(where, f"timeout target node {_show(node.timeout.to)} does not exist")
            if node.threshold is not None and not 1 <= node.threshold <= len(incoming[name]):
                self.problem(
                    where,
                    f"threshold {node.threshold} is out of range: it must be between 1 and the "
                    f"number of incoming flows ({len(incoming[name])})",
                )

    def reachability(
        self, start: str, known: Mapping[str, object], outgoing: Mapping[str, list[Flow]]
    ) -> None:
        seen = {start}
        stack = [start]
        while stack:
            for flow in outgoing[stack.pop()]:
                if flow.target not in seen:
                    seen.add(flow.target)
                    stack.append(flow.target)
        for name in known:
            if name not in seen:
                self.problem(f"node {name!r}: ", f"not reachable from the start node {start!r}")
