"""Advancing a process instance: from a definition, its live tokens, variables and the time, what changes.

The engine does no I/O and keeps no state between calls. Each call takes the live tokens and
returns a `Step`: the tokens created, the ids of tokens consumed, the instance status and an
ordered list of events. Every change of a token is a consumption plus, if it lives on, a new
token with a fresh id from `new_id`; input tokens are never altered.

Processing. Tokens on the move are handled first in, first out. Arriving at a node:

* If the node has more than one incoming flow and its join is not `immediate`, the token
  becomes WAITING there, `arrived_by` the flow it came along.
  - `wait_all` fires once every incoming flow has a waiting token.
  - `threshold: N` fires as soon as N distinct incoming flows have waiting tokens.
  - `inclusive` fires once no live token outside the join (parked, incident, waiting at another
    join) can still travel along one of its unfilled incoming flows. It is checked only when no
    token is on the move, repeatedly, until no inclusive join can fire.
  Firing consumes the oldest waiting token of each filled flow (for `threshold`, of the N flows
  whose waiting tokens are oldest) and activates the node with one new token (`arrived_by` None).
  Threshold and late arrivals: tokens that arrive along the other flows after a threshold join
  fired are not discarded. They wait like any arrival and count toward the join's next
  activation, which fires when N distinct flows are filled again; until then they keep the
  instance running.
* Otherwise the token activates the node: start, passthrough and gateway nodes route out at
  once; an end node consumes it; a wait node parks it (due when its timeout runs out); a timer
  parks it until `after` has passed or the time its `until` expression names.

Routing out takes the node's declared flows whose condition holds (no condition always holds):
all of them with `split: all`, the first with `split: first`; one new token per flow taken.
A flow marked `default` is not among them wherever it is listed: it is taken alone, and only
when no other flow is (BPMN's default flow). When nothing is taken, or a condition fails to
evaluate, the token becomes an INCIDENT at the node and the rest of the instance carries on.

Due times: a timer's `after` and a wait's timeout are added to `now` in UTC, calendar months
and years first (see `durations.Duration.after`).

Each call may make at most `step_limit` automatic moves (arrivals and inclusive-join firings).
Past that, every token still on the move becomes an INCIDENT with `STEP_LIMIT_MESSAGE`, so a
cycle of automatic nodes can neither loop forever nor lose a token; retrying one continues it
with a fresh budget.

Retrying an incident (`signal` on an INCIDENT token) redoes what failed: a step-limit incident
arrives at its node again; a timer whose `until` failed (no due time) is re-run; any other
incident routes out of its node again with the current variables. An incident keeps the due
time of the timer it fired from, which tells a failed `until` from a failed route.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestra_server.engine.conditions import ExpressionError, evaluate_condition, evaluate_time
from orchestra_server.engine.durations import Duration
from orchestra_server.engine.model import (
    Definition,
    Event,
    EventKind,
    InstanceStatus,
    Join,
    Json,
    NodeType,
    Split,
    Token,
    TokenStatus,
)
from orchestra_server.engine.plan import NodePlan, plan_for
from orchestra_server.errors import TokenNotParked

STEP_LIMIT = 1000
STEP_LIMIT_MESSAGE = "step limit reached: too many automatic moves in one step (a cycle without a wait?)"

_ROUTE_AT_ONCE = frozenset({NodeType.START, NodeType.PASSTHROUGH, NodeType.GATEWAY})


@dataclass(frozen=True, slots=True)
class Step:
    """What one engine call changed."""

    # New live tokens, oldest first (never tokens created and consumed within the step).
    created: tuple[Token, ...]
    # Ids of tokens that were live before the step and are gone now.
    consumed: tuple[str, ...]
    status: InstanceStatus
    events: tuple[Event, ...]


def start(
    definition: Definition,
    variables: Mapping[str, Json],
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
) -> Step:
    """Put a token on the start node and advance until every token is parked, waiting or gone."""
    run = _Run(definition, (), variables, now, new_id, step_limit)
    moving = run.spawn(definition.start_node, None)
    run.events.append(Event(EventKind.STARTED, definition.start_node, moving.id))
    run.activate(moving)
    run.drain()
    return run.finish()


def signal(
    definition: Definition,
    tokens: Sequence[Token],
    variables: Mapping[str, Json],
    token_id: str,
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
) -> Step:
    """Release a parked token (its node's work is done) or retry an incident, then advance.

    Raises TokenNotParked unless `token_id` names a PARKED token on a wait or timer node or an
    INCIDENT token.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit)
    token = run.live.get(token_id)
    plan = run.plan.nodes.get(token.node_id) if token is not None else None
    if token is None or plan is None:
        raise TokenNotParked()
    kind = plan.node.type
    if token.status is TokenStatus.PARKED and kind in (NodeType.WAIT, NodeType.TIMER):
        run.consume(token)
        moving = _Moving.resume(token)
        run.events.append(Event(EventKind.SIGNALLED, token.node_id, token.id))
        run.route_out(moving)
    elif token.status is TokenStatus.INCIDENT:
        run.consume(token)
        moving = _Moving.resume(token)
        run.events.append(Event(EventKind.RETRIED, token.node_id, token.id, message=token.message))
        if token.message == STEP_LIMIT_MESSAGE:
            if token.arrived_by is None:
                run.activate(moving)
            else:
                run.arrive(moving)
        elif kind is NodeType.END or (kind is NodeType.TIMER and token.due_at is None):
            run.activate(moving)
        else:
            run.route_out(moving)
    else:
        raise TokenNotParked()
    run.drain()
    return run.finish()


def fire_due(
    definition: Definition,
    tokens: Sequence[Token],
    variables: Mapping[str, Json],
    token_id: str,
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
) -> Step:
    """The scheduler's firing: a due timer routes out; a wait whose timeout ran out takes its timeout flow.

    Raises TokenNotParked unless `token_id` names a PARKED token whose due time is not after `now`.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit)
    token = run.live.get(token_id)
    plan = run.plan.nodes.get(token.node_id) if token is not None else None
    if (
        token is None
        or plan is None
        or token.status is not TokenStatus.PARKED
        or token.due_at is None
        or token.due_at > now
    ):
        raise TokenNotParked()
    if plan.node.type is NodeType.TIMER:
        run.consume(token)
        run.events.append(Event(EventKind.TIMER_FIRED, token.node_id, token.id, due_at=token.due_at))
        run.route_out(_Moving.resume(token))
    elif plan.node.type is NodeType.WAIT and plan.timeout_flow is not None:
        run.consume(token)
        flow = plan.timeout_flow
        moving = run.spawn(flow.target, flow.index)
        run.events.append(
            Event(EventKind.TIMEOUT_FIRED, token.node_id, token.id, (flow.index,), (moving.id,), token.due_at)
        )
        run.queue.append(moving)
    else:
        raise TokenNotParked()
    run.drain()
    return run.finish()


class _Moving:
    """A token on the move: not yet parked, waiting or in an incident."""

    __slots__ = ("arrived_by", "continued", "due_at", "id", "node_id", "ordinal")

    def __init__(self, token_id: str, node_id: str, ordinal: int, arrived_by: int | None) -> None:
        self.id = token_id
        self.node_id = node_id
        self.ordinal = ordinal
        self.arrived_by = arrived_by
        self.due_at: datetime | None = None
        # It carries on a consumed token, whose id it bears until it comes to rest as a new token.
        self.continued = False

    @classmethod
    def resume(cls, token: Token) -> _Moving:
        moving = cls(token.id, token.node_id, token.ordinal, token.arrived_by)
        moving.due_at = token.due_at
        moving.continued = True
        return moving


class _Run:
    """The working state of one engine call."""

    def __init__(
        self,
        definition: Definition,
        tokens: Sequence[Token],
        variables: Mapping[str, Json],
        now: datetime,
        new_id: Callable[[], str],
        step_limit: int,
    ) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self.plan = plan_for(definition)
        self.variables = variables
        self.now = now
        self.new_id = new_id
        self.budget = step_limit
        self.live: dict[str, Token] = {token.id: token for token in tokens}
        self.before = tuple(self.live)
        self.next_ordinal = max((token.ordinal for token in self.live.values()), default=0) + 1
        # Join node -> incoming flow index -> its waiting tokens, oldest first.
        self.waiting: dict[str, dict[int, list[Token]]] = {}
        waiting = [
            t for t in self.live.values() if t.status is TokenStatus.WAITING and t.arrived_by is not None
        ]
        for token in sorted(waiting, key=lambda t: t.ordinal):
            if token.arrived_by is not None:
                self.waiting.setdefault(token.node_id, {}).setdefault(token.arrived_by, []).append(token)
        self.queue: deque[_Moving] = deque()
        self.events: list[Event] = []

    def spawn(self, node_id: str, arrived_by: int | None) -> _Moving:
        moving = _Moving(self.new_id(), node_id, self.next_ordinal, arrived_by)
        self.next_ordinal += 1
        return moving

    def settle(
        self,
        moving: _Moving,
        status: TokenStatus,
        *,
        due_at: datetime | None = None,
        message: str | None = None,
    ) -> Token:
        if moving.continued:
            moving.continued = False
            moving.id = self.new_id()
            moving.ordinal = self.next_ordinal
            self.next_ordinal += 1
        token = Token(moving.id, moving.node_id, status, moving.ordinal, moving.arrived_by, due_at, message)
        self.live[token.id] = token
        return token

    def consume(self, token: Token) -> None:
        del self.live[token.id]
        if token.status is TokenStatus.WAITING and token.arrived_by is not None:
            slot = self.waiting.get(token.node_id, {}).get(token.arrived_by)
            if slot is not None and token in slot:
                slot.remove(token)

    def incident(self, moving: _Moving, message: str, due_at: datetime | None = None) -> None:
        token = self.settle(moving, TokenStatus.INCIDENT, due_at=due_at, message=message)
        self.events.append(Event(EventKind.INCIDENT, token.node_id, token.id, message=message))

    def drain(self) -> None:
        """Process moving tokens, then inclusive joins, until nothing moves."""
        while True:
            while self.queue:
                if self.budget <= 0:
                    while self.queue:
                        self.incident(self.queue.popleft(), STEP_LIMIT_MESSAGE)
                    break
                self.budget -= 1
                self.arrive(self.queue.popleft())
            if not self.fire_inclusive():
                return

    def arrive(self, moving: _Moving) -> None:
        plan = self.plan.nodes[moving.node_id]
        if plan.join is Join.IMMEDIATE or moving.arrived_by is None:
            self.activate(moving)
            return
        token = self.settle(moving, TokenStatus.WAITING)
        self.events.append(Event(EventKind.WAITING, token.node_id, token.id, (moving.arrived_by,)))
        self.waiting.setdefault(token.node_id, {}).setdefault(moving.arrived_by, []).append(token)
        if plan.join is Join.INCLUSIVE:
            return
        slots = self.waiting[token.node_id]
        filled = [index for index in plan.incoming if slots.get(index)]
        needed = len(plan.incoming) if plan.join is Join.WAIT_ALL else plan.threshold
        if len(filled) >= needed:
            chosen = sorted(filled, key=lambda index: slots[index][0].ordinal)[:needed]
            self.activate(self.fire_join(plan, sorted(chosen)))

    def fire_join(self, plan: NodePlan, flows: list[int]) -> _Moving:
        slots = self.waiting[plan.node.id]
        consumed = []
        for index in flows:
            token = slots[index].pop(0)
            del self.live[token.id]
            consumed.append(token.id)
        moving = self.spawn(plan.node.id, None)
        self.events.append(
            Event(EventKind.JOIN_FIRED, plan.node.id, moving.id, tuple(flows), tuple(consumed))
        )
        return moving

    def fire_inclusive(self) -> bool:
        for node_id in self.plan.inclusive_joins:
            slots = self.waiting.get(node_id)
            if not slots:
                continue
            filled = sorted(index for index, tokens in slots.items() if tokens)
            if not filled:
                continue
            unfilled = self.plan.incoming_mask[node_id]
            for index in filled:
                unfilled &= ~(1 << index)
            if unfilled and self.can_still_arrive(node_id, unfilled):
                continue
            moving = self.fire_join(self.plan.nodes[node_id], filled)
            if self.budget <= 0:
                self.incident(moving, STEP_LIMIT_MESSAGE)
            else:
                self.budget -= 1
                self.activate(moving)
            return True
        return False

    def can_still_arrive(self, join: str, flows: int) -> bool:
        """Whether a live token outside the join could still travel along one of `flows` (a bit mask)."""
        for token in self.live.values():
            if token.node_id == join and token.status is TokenStatus.WAITING:
                continue
            reach = self.plan.reach(token.node_id)
            if token.message == STEP_LIMIT_MESSAGE and token.arrived_by is not None:
                # It stopped on its way in: the flow it was travelling along is still ahead of it.
                reach |= 1 << token.arrived_by
            if reach & flows:
                return True
        return False

    def activate(self, moving: _Moving) -> None:
        plan = self.plan.nodes[moving.node_id]
        node = plan.node
        if node.type in _ROUTE_AT_ONCE:
            self.route_out(moving)
        elif node.type is NodeType.END:
            self.events.append(Event(EventKind.ENDED, node.id, moving.id))
        elif node.type is NodeType.WAIT:
            due_at = None
            if node.timeout is not None:
                due_at = self.later(node.timeout.after)
                if due_at is None:
                    self.incident(moving, "the timeout's due time is out of range")
                    return
            token = self.settle(moving, TokenStatus.PARKED, due_at=due_at)
            self.events.append(Event(EventKind.PARKED, node.id, token.id, due_at=due_at))
        else:
            if node.after is not None:
                due_at = self.later(node.after)
                if due_at is None:
                    self.incident(moving, "the timer's due time is out of range")
                    return
            else:
                try:
                    assert plan.until is not None
                    due_at = evaluate_time(plan.until, self.variables)
                except ExpressionError as exc:
                    self.incident(moving, str(exc))
                    return
            token = self.settle(moving, TokenStatus.PARKED, due_at=due_at)
            self.events.append(Event(EventKind.PARKED, node.id, token.id, due_at=due_at))

    def route_out(self, moving: _Moving) -> None:
        plan = self.plan.nodes[moving.node_id]
        taken = []
        default = None
        try:
            for flow, condition in plan.routes:
                if flow.default:
                    default = flow
                elif condition is None or evaluate_condition(condition, self.variables):
                    taken.append(flow)
                    if plan.node.split is Split.FIRST:
                        break
        except ExpressionError as exc:
            self.incident(moving, str(exc), moving.due_at)
            return
        if not taken and default is not None:
            taken.append(default)
        if not taken:
            message = f"no outgoing flow of node {plan.node.id!r} has a condition that holds"
            self.incident(moving, message, moving.due_at)
            return
        created = [self.spawn(flow.target, flow.index) for flow in taken]
        self.queue.extend(created)
        self.events.append(
            Event(
                EventKind.ROUTED,
                plan.node.id,
                moving.id,
                tuple(flow.index for flow in taken),
                tuple(m.id for m in created),
            )
        )

    def later(self, duration: Duration) -> datetime | None:
        try:
            return duration.after(self.now)
        except (OverflowError, ValueError):
            return None

    def finish(self) -> Step:
        before = set(self.before)
        created = tuple(
            sorted((t for t in self.live.values() if t.id not in before), key=lambda t: t.ordinal)
        )
        consumed = tuple(token_id for token_id in self.before if token_id not in self.live)
        status = InstanceStatus.RUNNING if self.live else InstanceStatus.COMPLETED
        if status is InstanceStatus.COMPLETED:
            self.events.append(Event(EventKind.COMPLETED))
        return Step(created, consumed, status, tuple(self.events))
