"""A driver for engine tests: it owns an instance's live tokens and checks every Step against them."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from orchestra_server.engine import definition as definitions
from orchestra_server.engine import engine
from orchestra_server.engine.model import (
    Definition,
    Event,
    EventKind,
    InstanceStatus,
    Join,
    NodeType,
    Token,
    TokenStatus,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def define(text: str, *, source: str = "test.yaml", strict: bool = False) -> Definition:
    """A definition from YAML text. Not strict by default: the engine must run whatever it may be
    handed, including definitions that earlier versions accepted and deploy now refuses (a flow
    never taken, a join that never fires), which are read back from storage the same way."""
    return definitions.parse(yaml.safe_load(textwrap.dedent(text)), source=source, strict=strict)


def load_file(path: Path) -> Definition:
    """A definition file, read as the service reads one (the engine itself takes text)."""
    return definitions.load(path.read_bytes(), source=str(path))


class Driver:
    """Runs one instance through the engine, as the server would, asserting the engine's invariants."""

    def __init__(
        self,
        definition: Definition,
        variables: Mapping[str, Any] | None = None,
        *,
        now: datetime = NOW,
        step_limit: int = engine.STEP_LIMIT,
        token_limit: int = engine.TOKEN_LIMIT,
    ) -> None:
        self.definition = definition
        self.variables: dict[str, Any] = dict(variables or {})
        self.now = now
        self.step_limit = step_limit
        self.token_limit = token_limit
        self.tokens: dict[str, Token] = {}
        self.status: InstanceStatus | None = None
        self.events: list[Event] = []
        self.issued: list[str] = []
        self.ever_live: set[str] = set()

    def new_id(self) -> str:
        token_id = f"tok{len(self.issued) + 1}"
        self.issued.append(token_id)
        return token_id

    # -- engine calls ---------------------------------------------------------------------------

    def start(self) -> engine.Step:
        step = engine.start(
            self.definition,
            dict(self.variables),
            now=self.now,
            new_id=self.new_id,
            step_limit=self.step_limit,
            token_limit=self.token_limit,
        )
        return self._apply(step)

    def signal(self, token_id: str) -> engine.Step:
        given = list(self.tokens.values())
        step = engine.signal(
            self.definition,
            given,
            dict(self.variables),
            token_id,
            now=self.now,
            new_id=self.new_id,
            step_limit=self.step_limit,
            token_limit=self.token_limit,
        )
        assert given == list(self.tokens.values()), "the engine altered its input"
        return self._apply(step)

    def skip(self, token_id: str) -> engine.Step:
        return self._resolve(engine.skip, token_id)

    def cancel_branch(self, token_id: str) -> engine.Step:
        return self._resolve(engine.cancel_branch, token_id)

    def _resolve(self, call: engine.Advance, token_id: str) -> engine.Step:
        given = list(self.tokens.values())
        step = call(
            self.definition,
            given,
            dict(self.variables),
            token_id,
            now=self.now,
            new_id=self.new_id,
            step_limit=self.step_limit,
            token_limit=self.token_limit,
        )
        assert given == list(self.tokens.values()), "the engine altered its input"
        return self._apply(step)

    def fire(self, token_id: str, *, now: datetime | None = None) -> engine.Step:
        if now is not None:
            self.now = now
        given = list(self.tokens.values())
        step = engine.fire_due(
            self.definition,
            given,
            dict(self.variables),
            token_id,
            now=self.now,
            new_id=self.new_id,
            step_limit=self.step_limit,
            token_limit=self.token_limit,
        )
        assert given == list(self.tokens.values()), "the engine altered its input"
        return self._apply(step)

    # -- views ----------------------------------------------------------------------------------

    @property
    def live(self) -> list[Token]:
        """The live tokens as a caller sees them (threshold joins' markers are not tokens to a caller)."""
        return sorted(
            (t for t in self.tokens.values() if t.status is not TokenStatus.ABSORBING),
            key=lambda t: t.ordinal,
        )

    @property
    def markers(self) -> list[Token]:
        return sorted(
            (t for t in self.tokens.values() if t.status is TokenStatus.ABSORBING), key=lambda t: t.ordinal
        )

    def at(self, node_id: str, status: TokenStatus | None = None) -> list[Token]:
        return [t for t in self.live if t.node_id == node_id and (status is None or t.status is status)]

    def one(self, node_id: str, status: TokenStatus | None = None) -> Token:
        found = self.at(node_id, status)
        assert len(found) == 1, f"expected one token at {node_id}, found {found}"
        return found[0]

    def kinds(self, step: engine.Step) -> list[EventKind]:
        return [event.kind for event in step.events]

    # -- invariants -----------------------------------------------------------------------------

    def _apply(self, step: engine.Step) -> engine.Step:
        before = dict(self.tokens)
        issued = set(self.issued)
        assert len(set(step.consumed)) == len(step.consumed), "a token consumed twice"
        for token_id in step.consumed:
            assert token_id in before, f"consumed {token_id}, which was not live"
        top = max((t.ordinal for t in before.values()), default=0)
        created_ids = [t.id for t in step.created]
        assert len(set(created_ids)) == len(created_ids), "a token created twice"
        assert [t.ordinal for t in step.created] == sorted(t.ordinal for t in step.created)
        for token in step.created:
            assert token.id in issued, "a token id that new_id did not give"
            assert token.id not in self.ever_live, f"token id {token.id} reused"
            assert token.ordinal > top, "a new token is not younger than every live one"
            self._check_token(token)
        after = {k: v for k, v in before.items() if k not in set(step.consumed)}
        after.update({t.id: t for t in step.created})
        assert (step.status is InstanceStatus.COMPLETED) == (not after)
        assert step.status in (InstanceStatus.RUNNING, InstanceStatus.COMPLETED)
        self._check_balance(step, _callers(before), _callers(after))
        self.ever_live.update(created_ids)
        self.tokens = after
        self.status = step.status
        self.events.extend(step.events)
        return step

    def _check_token(self, token: Token) -> None:
        node = self.definition.nodes.get(token.node_id)
        assert node is not None, f"token on unknown node {token.node_id}"
        if token.status is TokenStatus.PARKED:
            assert node.type in (NodeType.WAIT, NodeType.TIMER)
            assert (token.due_at is not None) == (node.type is NodeType.TIMER or node.timeout is not None)
        elif token.status is TokenStatus.WAITING:
            assert token.arrived_by is not None
            assert self.definition.flows[token.arrived_by].target == token.node_id
        elif token.status is TokenStatus.ABSORBING:
            assert token.arrived_by is not None
            assert self.definition.flows[token.arrived_by].target == token.node_id
            assert node.join is Join.THRESHOLD
        else:
            assert token.reason
            assert token.incident is not None
            assert token.retry is not None
        assert token.since == self.now, "a token that came to rest does not say when"

    def _check_balance(self, step: engine.Step, before: int, after: int) -> None:
        """Every event moves the live count predictably: routes fan out, ends and joins take tokens in."""
        change = 0
        for event in step.events:
            if event.kind is EventKind.STARTED:
                change += 1
            elif event.kind is EventKind.ROUTED:
                change += len(event.tokens) - 1
            elif event.kind in (EventKind.ENDED, EventKind.ABSORBED, EventKind.BRANCH_CANCELLED):
                change -= 1
            elif event.kind is EventKind.JOIN_FIRED:
                change -= len(event.tokens) - 1
        assert after - before == change, f"live tokens went {before} -> {after}, events say {change:+d}"


def _callers(tokens: Mapping[str, Token]) -> int:
    return sum(1 for t in tokens.values() if t.status is not TokenStatus.ABSORBING)
