"""The engine's value types: definitions (graphs of nodes and flows) and live tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from orchestra_server.engine.durations import Duration

# A JSON value as Python holds it: None, bool, int, float, str, list, dict.
Json = Any


class NodeType(StrEnum):
    START = "start"
    END = "end"
    PASSTHROUGH = "passthrough"
    WAIT = "wait"
    TIMER = "timer"
    GATEWAY = "gateway"


class Split(StrEnum):
    """Which of a node's outgoing flows whose condition holds it takes."""

    ALL = "all"
    FIRST = "first"


class Join(StrEnum):
    """When a node with several incoming flows fires."""

    IMMEDIATE = "immediate"
    WAIT_ALL = "wait_all"
    INCLUSIVE = "inclusive"
    THRESHOLD = "threshold"


class TokenStatus(StrEnum):
    PARKED = "parked"
    WAITING = "waiting"
    INCIDENT = "incident"


class InstanceStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Flow:
    """A directed edge; `index` is its position in the definition (order matters for split `first`)."""

    index: int
    source: str
    target: str
    when: str | None = None
    # True for the implicit flow a wait node's timeout routes along.
    timeout: bool = False
    # The default flow (never conditioned) is taken only when no other flow of its node is.
    default: bool = False


@dataclass(frozen=True, slots=True)
class Timeout:
    """A wait node's timeout: unsignalled after `after`, the token moves to `to`."""

    after: Duration
    to: str


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    type: NodeType
    label: str | None = None
    split: Split = Split.ALL
    join: Join = Join.IMMEDIATE
    # For Join.THRESHOLD: how many distinct incoming flows must be filled.
    threshold: int | None = None
    # Timer nodes: exactly one of `after` and `until` (a CEL expression giving an RFC 3339 time).
    after: Duration | None = None
    until: str | None = None
    # Wait nodes only.
    timeout: Timeout | None = None


@dataclass(frozen=True, slots=True)
class Definition:
    """A validated process definition. Build one with `orchestra_server.engine.definition.parse`."""

    id: str
    label: str | None
    nodes: Mapping[str, Node]
    # Declared flows in order, then one implicit flow per wait-node timeout.
    flows: tuple[Flow, ...]
    start_node: str
    outgoing: Mapping[str, tuple[Flow, ...]] = field(repr=False)
    incoming: Mapping[str, tuple[Flow, ...]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Token:
    """A live token. Consumed tokens cease to exist; the engine reports their ids."""

    id: str
    node_id: str
    status: TokenStatus
    # Order of creation within the instance: oldest first.
    ordinal: int
    # The flow it arrived by (index into Definition.flows); None on the start node.
    arrived_by: int | None = None
    # Parked timer tokens, and wait tokens with a timeout: when they fire.
    due_at: datetime | None = None
    # Incident tokens: why the token could not move.
    message: str | None = None


class EventKind(StrEnum):
    """What an `Event` records."""

    # The instance began: its first token is on the start node.
    STARTED = "started"
    # A parked token was released by hand.
    SIGNALLED = "signalled"
    # The scheduler released a timer token, or a wait token whose timeout ran out.
    TIMER_FIRED = "timer_fired"
    TIMEOUT_FIRED = "timeout_fired"
    # An incident token was retried.
    RETRIED = "retried"
    # A token left a node along `flows`, creating `tokens`.
    ROUTED = "routed"
    PARKED = "parked"
    # A token arrived at a join by `flows[0]` and waits for its partners.
    WAITING = "waiting"
    # A join consumed `tokens` (one per flow in `flows`) and activated its node with `token_id`.
    JOIN_FIRED = "join_fired"
    INCIDENT = "incident"
    # A token reached an end node and was consumed.
    ENDED = "ended"
    # No live token remains.
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an instance's audit trail, as the engine reports it."""

    kind: EventKind
    node_id: str | None = None
    token_id: str | None = None
    flows: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()
    due_at: datetime | None = None
    message: str | None = None
