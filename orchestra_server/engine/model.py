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
    # Not a token a caller sees: a threshold join that fired still expects a late token along
    # `arrived_by` and will absorb it. Kept among the tokens so that all of an instance's engine
    # state is its token set; readers of the API never see these.
    ABSORBING = "absorbing"


class IncidentKind(StrEnum):
    """Why a token stopped in an incident: data, so nothing has to read the reason's text."""

    # A condition (or a timer's `until`) failed to compile or to evaluate, or gave no boolean.
    CONDITION_FAILED = "condition_failed"
    # A node routing out found no outgoing flow whose condition holds.
    NO_FLOW_MATCHED = "no_flow_matched"
    # One call made more automatic moves than its step limit (a cycle without a wait?).
    STEP_LIMIT = "step_limit"
    # One call would have left more live tokens than the token limit; it was not carried out.
    TOKEN_LIMIT = "token_limit"  # noqa: S105 (an incident kind, not a credential)
    # A token waits at a join that no live token can reach enough flows of to fire it.
    JOIN_UNREACHABLE = "join_unreachable"
    # A timer or timeout could not get a due time (out of range, or `until` gave no time).
    TIMER_INVALID = "timer_invalid"
    # An incident recorded before incidents carried a kind.
    UNCLASSIFIED = "unclassified"


class Retry(StrEnum):
    """What signalling an incident token does: it redoes the move that failed."""

    # Arrive at the token's node again along `arrived_by` (wait at its join, or activate it).
    ARRIVE = "arrive"
    # Activate the token's node again (a timer computes its due time again).
    ACTIVATE = "activate"
    # Route out of the token's node again with the current variables.
    ROUTE_OUT = "route_out"
    # Take the node's timeout flow (a wait whose timeout had run out).
    TIMEOUT = "timeout"


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
    # Incident tokens: why the token could not move, for people (`incident` says it for programs).
    reason: str | None = None
    incident: IncidentKind | None = None
    # Incident tokens: what a retry does. None on incidents recorded before it was kept.
    retry: Retry | None = None
    # When the token came to rest (parked, began waiting, or stopped in its incident).
    since: datetime | None = None


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
    # An incident token was moved on as if its node had completed.
    SKIPPED = "skipped"
    # An incident token was removed with the branch it was on.
    BRANCH_CANCELLED = "branch_cancelled"
    # A token left a node along `flows`, creating `tokens`.
    ROUTED = "routed"
    PARKED = "parked"
    # A token arrived at a join by `flows[0]` and waits for its partners.
    WAITING = "waiting"
    # A join consumed `tokens` (one per flow in `flows`) and activated its node with `token_id`.
    JOIN_FIRED = "join_fired"
    # A threshold join absorbed `token_id`, a late arrival along `flows[0]` of an activation that
    # had already fired, with the marker `tokens[0]` that expected it.
    ABSORBED = "absorbed"
    # A threshold join stopped expecting late arrivals along `flows`: no live token can reach them.
    JOIN_RESET = "join_reset"
    # `token_id` stopped in an incident of kind `incident` (`message` is the reason).
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
    incident: IncidentKind | None = None
