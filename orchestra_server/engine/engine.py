"""Advancing a process instance: from a definition, its live tokens, variables and the time, what changes.

The engine does no I/O and keeps no state between calls. Each call takes the live tokens and
returns a `Step`: the tokens created, the ids of tokens consumed, the instance status and an
ordered list of events. Every change of a token is a consumption plus, if it lives on, a new
token with a fresh id from `new_id`; input tokens are never altered. Every token records
`since`, the `now` of the call in which it came to rest.

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
  Threshold joins follow BPMN's complex gateway: when one fires, it leaves an ABSORBING marker
  for each incoming flow that did not deliver to this activation. A token that later arrives
  along such a flow is the activation's late token: it is absorbed (consumed with its marker,
  event ABSORBED) instead of waiting. Once no live token can reach a marker's flow any more,
  the marker goes (event JOIN_RESET); with no markers left the join has reset, and the next
  round of a loop starts afresh. Arrivals along flows that already delivered wait as usual and
  count toward the next activation. Markers are engine state, not tokens a caller sees.
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

Joins that can never fire. When nothing is on the move any more, every `wait_all` or
`threshold` join holding waiting tokens is checked: if the flows already filled plus the
unfilled flows some live token outside the join could still travel along cannot make up what
the join needs, its waiting tokens become incidents of kind JOIN_UNREACHABLE. An instance is
never left silently waiting for a join that cannot fire.

Limits. Each call may make at most `step_limit` automatic moves (arrivals and inclusive-join
firings). Past that, every token still on the move becomes an incident of kind STEP_LIMIT, so
a cycle of automatic nodes can neither loop forever nor lose a token; retrying one continues
it with a fresh budget. A call that would leave more than `token_limit` live tokens is not
carried out at all: the token it was asked to move (the start token, for a start) becomes one
incident of kind TOKEN_LIMIT instead, whose retry attempts the same move again.

Incidents. Every incident token carries its kind (`IncidentKind`), a reason for people, and
what a retry does (`Retry`). Retrying (`signal` on an INCIDENT token) redoes what failed: a
step-limit or unreachable-join incident arrives at its node again; a timer whose due time
failed is re-run; a failed route routes out of its node again with the current variables; a
token-limit incident redoes the move that was refused. An incident keeps the due time of the
timer it fired from. Incidents recorded before they carried a retry are retried as they were
then: an end node or a timer without a due time is activated again, anything else routes out.

Resolving by hand. `skip` moves an incident token on as if its node had completed: the node
routes out with its flows chosen as usual (a timer without waiting), an end node consumes it,
and a join that could never fire is activated with the token that arrived. `cancel_branch`
consumes the token and advances what its absence lets move (an inclusive join may fire, a join
that needed it stops in an incident, markers nothing can reach any more go); with nothing but
markers left, they go too and the instance completes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from orchestra_server.engine.conditions import ExpressionError, evaluate_condition, evaluate_time
from orchestra_server.engine.durations import Duration
from orchestra_server.engine.model import (
    Definition,
    Event,
    EventKind,
    IncidentKind,
    InstanceStatus,
    Join,
    Json,
    NodeType,
    Retry,
    Split,
    Token,
    TokenStatus,
)
from orchestra_server.engine.plan import NodePlan, plan_for
from orchestra_server.errors import TokenNotParked

# The most automatic moves (arrivals and inclusive-join firings) one call makes.
STEP_LIMIT = 1000
# The most live tokens one instance may hold after a call (published in the README).
TOKEN_LIMIT = 1000
# A step-limit incident's reason, for people (its kind says what it is, for programs).
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


class Advance(Protocol):
    """An engine call that moves one token: signal, fire_due, skip, cancel_branch."""

    def __call__(
        self,
        definition: Definition,
        tokens: Sequence[Token],
        variables: Mapping[str, Json],
        token_id: str,
        *,
        now: datetime,
        new_id: Callable[[], str],
        step_limit: int = ...,
        token_limit: int = ...,
    ) -> Step: ...


class _TokenLimitReached(Exception):
    """The call would leave more live tokens than its limit; it is abandoned."""


def start(
    definition: Definition,
    variables: Mapping[str, Json],
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
    token_limit: int = TOKEN_LIMIT,
) -> Step:
    """Put a token on the start node and advance until every token is parked, waiting or gone."""
    run = _Run(definition, (), variables, now, new_id, step_limit, token_limit)
    moving = run.spawn(definition.start_node, None)
    run.events.append(Event(EventKind.STARTED, definition.start_node, moving.id))
    try:
        run.activate(moving)
        run.drain()
    except _TokenLimitReached:
        run = run.restart()
        moving = run.spawn(definition.start_node, None)
        run.events.append(Event(EventKind.STARTED, definition.start_node, moving.id))
        run.refuse(moving, Retry.ARRIVE)
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
    token_limit: int = TOKEN_LIMIT,
) -> Step:
    """Release a parked token (its node's work is done) or retry an incident, then advance.

    Raises TokenNotParked unless `token_id` names a PARKED token on a wait or timer node or an
    INCIDENT token.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit, token_limit)
    token = run.live.get(token_id)
    plan = run.plan.nodes.get(token.node_id) if token is not None else None
    if token is None or plan is None:
        raise TokenNotParked()
    kind = plan.node.type
    if token.status is TokenStatus.PARKED and kind in (NodeType.WAIT, NodeType.TIMER):
        retry = Retry.ROUTE_OUT
        event = Event(EventKind.SIGNALLED, token.node_id, token.id)
    elif token.status is TokenStatus.INCIDENT:
        retry = _retry_of(token, kind)
        event = Event(
            EventKind.RETRIED, token.node_id, token.id, message=token.reason, incident=token.incident
        )
    else:
        raise TokenNotParked()
    return run.resume(token, retry, event)


def fire_due(
    definition: Definition,
    tokens: Sequence[Token],
    variables: Mapping[str, Json],
    token_id: str,
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
    token_limit: int = TOKEN_LIMIT,
) -> Step:
    """The scheduler's firing: a due timer routes out; a wait whose timeout ran out takes its timeout flow.

    Raises TokenNotParked unless `token_id` names a PARKED token whose due time is not after `now`.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit, token_limit)
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
        event = Event(EventKind.TIMER_FIRED, token.node_id, token.id, due_at=token.due_at)
        return run.resume(token, Retry.ROUTE_OUT, event)
    if plan.node.type is NodeType.WAIT and plan.timeout_flow is not None:
        return run.resume(token, Retry.TIMEOUT, None)
    raise TokenNotParked()


def skip(
    definition: Definition,
    tokens: Sequence[Token],
    variables: Mapping[str, Json],
    token_id: str,
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
    token_limit: int = TOKEN_LIMIT,
) -> Step:
    """Move an incident token on as if its node had completed, then advance.

    The node routes out with its flows chosen as usual (a timer without waiting for its due
    time); an end node consumes the token; a join that could never fire is activated with the
    token that arrived. Raises TokenNotParked unless `token_id` names an INCIDENT token.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit, token_limit)
    token = run.live.get(token_id)
    plan = run.plan.nodes.get(token.node_id) if token is not None else None
    if token is None or plan is None or token.status is not TokenStatus.INCIDENT:
        raise TokenNotParked()
    if token.incident is IncidentKind.JOIN_UNREACHABLE or plan.node.type is NodeType.END:
        how = Retry.ACTIVATE
    else:
        how = Retry.ROUTE_OUT
    event = Event(EventKind.SKIPPED, token.node_id, token.id, message=token.reason, incident=token.incident)
    # Activated as a node's single activation, it no longer counts as an arrival along a flow.
    return run.resume(replace(token, arrived_by=None) if how is Retry.ACTIVATE else token, how, event)


def cancel_branch(
    definition: Definition,
    tokens: Sequence[Token],
    variables: Mapping[str, Json],
    token_id: str,
    *,
    now: datetime,
    new_id: Callable[[], str],
    step_limit: int = STEP_LIMIT,
    token_limit: int = TOKEN_LIMIT,
) -> Step:
    """Remove an incident token, then advance what its absence lets move.

    An inclusive join that waited for the branch may fire; a join that needed it stops in
    an incident; threshold-join markers no token can reach any more go. With nothing else
    live (markers aside), the instance completes. Raises TokenNotParked unless `token_id`
    names an INCIDENT token.
    """
    run = _Run(definition, tokens, variables, now, new_id, step_limit, token_limit)
    token = run.live.get(token_id)
    if token is None or token.node_id not in run.plan.nodes or token.status is not TokenStatus.INCIDENT:
        raise TokenNotParked()
    run.consume(token)
    run.events.append(
        Event(
            EventKind.BRANCH_CANCELLED, token.node_id, token.id, message=token.reason, incident=token.incident
        )
    )
    try:
        run.drain()
    except _TokenLimitReached:
        # An inclusive join firing in the drain would leave too many tokens: remove the branch
        # alone and leave the join to the next step that moves something.
        run = run.restart()
        run.consume(token)
        run.events.append(
            Event(
                EventKind.BRANCH_CANCELLED,
                token.node_id,
                token.id,
                message=token.reason,
                incident=token.incident,
            )
        )
    return run.finish()


def _retry_of(token: Token, kind: NodeType) -> Retry:
    """What retrying an incident does; incidents recorded without a retry are retried as they were then."""
    if token.retry is not None:
        return token.retry
    if token.incident is IncidentKind.STEP_LIMIT:
        return Retry.ARRIVE
    if kind is NodeType.END or (kind is NodeType.TIMER and token.due_at is None):
        return Retry.ACTIVATE
    return Retry.ROUTE_OUT


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
        token_limit: int,
    ) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self.definition = definition
        self.tokens = tokens
        self.plan = plan_for(definition)
        self.variables = variables
        self.now = now
        self.new_id = new_id
        self.step_limit = step_limit
        self.budget = step_limit
        self.token_limit = token_limit
        self.live: dict[str, Token] = {token.id: token for token in tokens}
        self.before = tuple(self.live)
        self.next_ordinal = max((token.ordinal for token in self.live.values()), default=0) + 1
        # Join node -> incoming flow index -> its waiting tokens, oldest first.
        self.waiting: dict[str, dict[int, list[Token]]] = {}
        # Threshold join node -> incoming flow index -> markers expecting a late token, oldest first.
        self.absorbing: dict[str, dict[int, list[Token]]] = {}
        for token in sorted(self.live.values(), key=lambda t: t.ordinal):
            if token.arrived_by is None:
                continue
            if token.status is TokenStatus.WAITING:
                self.waiting.setdefault(token.node_id, {}).setdefault(token.arrived_by, []).append(token)
            elif token.status is TokenStatus.ABSORBING:
                self.absorbing.setdefault(token.node_id, {}).setdefault(token.arrived_by, []).append(token)
        self.queue: deque[_Moving] = deque()
        self.events: list[Event] = []

    def restart(self) -> _Run:
        """A fresh run over the call's input, for a call that is abandoned."""
        return _Run(
            self.definition,
            self.tokens,
            self.variables,
            self.now,
            self.new_id,
            self.step_limit,
            self.token_limit,
        )

    def resume(self, token: Token, retry: Retry, event: Event | None) -> Step:
        """Consume `token` and carry out `retry` from where it is, then advance; a call that
        would leave too many tokens is abandoned for one TOKEN_LIMIT incident."""
        try:
            self.consume(token)
            self.carry_out(_Moving.resume(token), retry, event)
            self.drain()
        except _TokenLimitReached:
            run = self.restart()
            run.consume(token)
            if event is not None:
                run.events.append(event)
            elif retry is Retry.TIMEOUT:
                run.events.append(
                    Event(EventKind.TIMEOUT_FIRED, token.node_id, token.id, due_at=token.due_at)
                )
            run.refuse(_Moving.resume(token), retry)
            return run.finish()
        return self.finish()

    def carry_out(self, moving: _Moving, retry: Retry, event: Event | None) -> None:
        if retry is Retry.TIMEOUT:
            flow = self.plan.nodes[moving.node_id].timeout_flow
            if flow is None:
                raise TokenNotParked()
            onward = self.spawn(flow.target, flow.index)
            self.events.append(
                event
                or Event(
                    EventKind.TIMEOUT_FIRED,
                    moving.node_id,
                    moving.id,
                    (flow.index,),
                    (onward.id,),
                    moving.due_at,
                )
            )
            self.queue.append(onward)
            return
        if event is not None:
            self.events.append(event)
        if retry is Retry.ARRIVE:
            self.arrive(moving)
        elif retry is Retry.ACTIVATE:
            self.activate(moving)
        else:
            self.route_out(moving)

    def refuse(self, moving: _Moving, retry: Retry) -> None:
        reason = (
            f"token limit reached: this step would leave more than {self.token_limit} live tokens,"
            " so it was not carried out"
        )
        self.incident(moving, IncidentKind.TOKEN_LIMIT, reason, retry, moving.due_at)

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
        reason: str | None = None,
        incident: IncidentKind | None = None,
        retry: Retry | None = None,
    ) -> Token:
        if moving.continued:
            moving.continued = False
            moving.id = self.new_id()
            moving.ordinal = self.next_ordinal
            self.next_ordinal += 1
        token = Token(
            moving.id,
            moving.node_id,
            status,
            moving.ordinal,
            moving.arrived_by,
            due_at,
            reason,
            incident,
            retry,
            self.now,
        )
        self.live[token.id] = token
        return token

    def consume(self, token: Token) -> None:
        del self.live[token.id]
        if token.arrived_by is None:
            return
        if token.status is TokenStatus.WAITING:
            slots = self.waiting
        elif token.status is TokenStatus.ABSORBING:
            slots = self.absorbing
        else:
            return
        slot = slots.get(token.node_id, {}).get(token.arrived_by)
        if slot is not None and token in slot:
            slot.remove(token)

    def incident(
        self,
        moving: _Moving,
        kind: IncidentKind,
        reason: str,
        retry: Retry,
        due_at: datetime | None = None,
    ) -> None:
        token = self.settle(
            moving, TokenStatus.INCIDENT, due_at=due_at, reason=reason, incident=kind, retry=retry
        )
        self.events.append(Event(EventKind.INCIDENT, token.node_id, token.id, message=reason, incident=kind))

    def drain(self) -> None:
        """Process moving tokens, then inclusive joins, until nothing moves; then settle joins
        that can no longer fire or stop expecting late tokens."""
        while True:
            while self.queue:
                if self.budget <= 0:
                    while self.queue:
                        self.incident(
                            self.queue.popleft(), IncidentKind.STEP_LIMIT, STEP_LIMIT_MESSAGE, Retry.ARRIVE
                        )
                    break
                self.budget -= 1
                self.arrive(self.queue.popleft())
            if not self.fire_inclusive():
                break
        self.reset_absorbing()
        self.stop_unreachable_joins()

    def arrive(self, moving: _Moving) -> None:
        plan = self.plan.nodes[moving.node_id]
        if plan.join is Join.IMMEDIATE or moving.arrived_by is None:
            self.activate(moving)
            return
        markers = self.absorbing.get(moving.node_id, {}).get(moving.arrived_by)
        if markers:
            marker = markers[0]
            self.consume(marker)
            self.events.append(
                Event(EventKind.ABSORBED, moving.node_id, moving.id, (moving.arrived_by,), (marker.id,))
            )
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
        if plan.join is Join.THRESHOLD:
            # The flows that did not deliver owe this activation a late token, to be absorbed.
            for index in plan.incoming:
                if index not in flows:
                    marker = self.settle(self.spawn(plan.node.id, index), TokenStatus.ABSORBING)
                    self.absorbing.setdefault(plan.node.id, {}).setdefault(index, []).append(marker)
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
            if unfilled and self.reachable(node_id, unfilled):
                continue
            moving = self.fire_join(self.plan.nodes[node_id], filled)
            if self.budget <= 0:
                self.incident(moving, IncidentKind.STEP_LIMIT, STEP_LIMIT_MESSAGE, Retry.ARRIVE)
            else:
                self.budget -= 1
                self.activate(moving)
            return True
        return False

    def reachable(self, join: str, flows: int) -> int:
        """Which of `flows` (a bit mask) a live token outside the join could still travel along."""
        reach = 0
        for token in self.live.values():
            if token.status is TokenStatus.ABSORBING:
                continue
            if token.node_id == join and token.status is TokenStatus.WAITING:
                continue
            reach |= self.plan.reach(token.node_id) | self.ahead_of(token)
            if reach & flows == flows:
                break
        return reach & flows

    def reset_absorbing(self) -> None:
        """Markers whose flow no live token can reach any more will never absorb anything."""
        for node_id, slots in self.absorbing.items():
            owed = 0
            for index, markers in slots.items():
                if markers:
                    owed |= 1 << index
            if not owed:
                continue
            gone = owed & ~self.reachable(node_id, owed)
            if not gone:
                continue
            flows = tuple(index for index in sorted(slots) if gone & (1 << index))
            dropped = []
            for index in flows:
                for marker in list(slots[index]):
                    self.consume(marker)
                    dropped.append(marker.id)
            self.events.append(Event(EventKind.JOIN_RESET, node_id, None, flows, tuple(dropped)))

    def stop_unreachable_joins(self) -> None:
        """Waiting tokens of a join that can never fire become incidents.

        Parked and incident tokens may move again: they are the movers. A wait_all or
        threshold join can fire when its filled flows plus the unfilled ones movers can reach
        make up what it needs; an inclusive join, when a mover can reach one of its unfilled
        flows (it has not fired yet, so something still can). A join that can fire lends its
        reach to the movers, and so on until nothing changes. The wait_all and threshold joins
        left over never fire, even when several hold tokens the others wait for. Inclusive
        joins left over wait for those incidents (a retry may still reach them), unless no
        mover is left at all: then nothing can ever happen and they are incidents too.
        """
        pending: dict[str, tuple[int, int, int]] = {}
        for node_id, slots in self.waiting.items():
            delivered = [index for index, tokens in slots.items() if tokens]
            if not delivered:
                continue
            plan = self.plan.nodes[node_id]
            unfilled = self.plan.incoming_mask[node_id]
            for index in delivered:
                unfilled &= ~(1 << index)
            if plan.join is Join.INCLUSIVE:
                needed = 0
            else:
                needed = len(plan.incoming) if plan.join is Join.WAIT_ALL else plan.threshold
            pending[node_id] = (len(delivered), unfilled, needed)
        if not pending:
            return
        reach = 0
        movers = False
        for token in self.live.values():
            if token.status in (TokenStatus.PARKED, TokenStatus.INCIDENT):
                movers = True
                reach |= self.plan.reach(token.node_id) | self.ahead_of(token)
        progress = True
        while progress:
            progress = False
            for node_id, (filled, unfilled, needed) in list(pending.items()):
                can_come = reach & unfilled
                if (can_come != 0) if needed == 0 else (filled + can_come.bit_count() >= needed):
                    del pending[node_id]
                    reach |= self.plan.reach(node_id)
                    progress = True
        stopped = False
        for node_id, (filled, _, needed) in pending.items():
            plan = self.plan.nodes[node_id]
            if needed == 0:
                continue
            reason = (
                f"join at node {node_id!r} can never fire: it needs {needed} of its {len(plan.incoming)}"
                f" incoming flows, {filled} delivered, and no live token can bring the"
                f" {needed - filled} more it needs"
            )
            self.stop_waiting(node_id, reason)
            stopped = True
        if not movers and not stopped:
            for node_id in pending:
                reason = (
                    f"inclusive join at node {node_id!r} can never fire: only tokens waiting at joins"
                    " remain, each waiting for the others"
                )
                self.stop_waiting(node_id, reason)

    def stop_waiting(self, node_id: str, reason: str) -> None:
        slots = self.waiting[node_id]
        waiting = sorted((t for tokens in slots.values() for t in tokens), key=lambda t: t.ordinal)
        for token in waiting:
            self.consume(token)
            self.incident(_Moving.resume(token), IncidentKind.JOIN_UNREACHABLE, reason, Retry.ARRIVE)

    def ahead_of(self, token: Token) -> int:
        """The flow an incident token stopped on its way in along (a bit mask), still ahead of it."""
        if (
            token.status is TokenStatus.INCIDENT
            and token.arrived_by is not None
            and _retry_of(token, self.plan.nodes[token.node_id].node.type) is Retry.ARRIVE
        ):
            return 1 << token.arrived_by
        return 0

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
                    self.incident(
                        moving,
                        IncidentKind.TIMER_INVALID,
                        "the timeout's due time is out of range",
                        Retry.ACTIVATE,
                    )
                    return
            token = self.settle(moving, TokenStatus.PARKED, due_at=due_at)
            self.events.append(Event(EventKind.PARKED, node.id, token.id, due_at=due_at))
        else:
            if node.after is not None:
                due_at = self.later(node.after)
                if due_at is None:
                    self.incident(
                        moving,
                        IncidentKind.TIMER_INVALID,
                        "the timer's due time is out of range",
                        Retry.ACTIVATE,
                    )
                    return
            else:
                try:
                    assert plan.until is not None
                    due_at = evaluate_time(plan.until, self.variables)
                except ExpressionError as exc:
                    self.incident(moving, IncidentKind.TIMER_INVALID, str(exc), Retry.ACTIVATE)
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
            self.incident(moving, IncidentKind.CONDITION_FAILED, str(exc), Retry.ROUTE_OUT, moving.due_at)
            return
        if not taken and default is not None:
            taken.append(default)
        if not taken:
            message = f"no outgoing flow of node {plan.node.id!r} has a condition that holds"
            self.incident(moving, IncidentKind.NO_FLOW_MATCHED, message, Retry.ROUTE_OUT, moving.due_at)
            return
        if len(self.live) + len(self.queue) + len(taken) > self.token_limit:
            raise _TokenLimitReached()
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
        if all(token.status is TokenStatus.ABSORBING for token in self.live.values()):
            # Nothing is left to deliver a late token; the markers go with the instance.
            for token in list(self.live.values()):
                self.consume(token)
        before = set(self.before)
        created = tuple(
            sorted((t for t in self.live.values() if t.id not in before), key=lambda t: t.ordinal)
        )
        consumed = tuple(token_id for token_id in self.before if token_id not in self.live)
        status = InstanceStatus.RUNNING if self.live else InstanceStatus.COMPLETED
        if status is InstanceStatus.COMPLETED:
            self.events.append(Event(EventKind.COMPLETED))
        return Step(created, consumed, status, tuple(self.events))
