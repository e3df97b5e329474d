"""The process use cases: start, inspect, signal, fire, read and write variables; all scoped to one tenant."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from threading import Lock

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from orchestra_server.engine import engine
from orchestra_server.engine.model import Definition, InstanceStatus, Json, Token, TokenStatus
from orchestra_server.errors import (
    IdempotencyConflict,
    InstanceNotFound,
    InstanceNotWritable,
    InvalidArgument,
    TokenNotInIncident,
    TokenNotParked,
    UnknownDefinition,
)
from orchestra_server.service import limits
from orchestra_server.service.definitions import parse_stored
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.statements import Session

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]

_log = logging.getLogger("orchestra.scheduler")

INSTANCE_STATUSES = frozenset(s.value for s in InstanceStatus)
# The actor recorded for what the timer scheduler does.
SCHEDULER_ACTOR = "scheduler"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: the tenant it is scoped to and the consumer (or operator) acting."""

    tenant_id: str
    actor: str
    # What the caller's roles grant (identity.consumers); the transport checks each route's own.
    permissions: frozenset[str] = frozenset()


# Audit rows stay small whatever a step did: token lists are cut to this many entries (the
# counts stay exact), reasons to this many characters, and the detail as JSON never exceeds
# AUDIT_DETAIL_LIMIT bytes (published in the README).
AUDIT_LISTED_TOKENS = 100
AUDIT_REASON_LENGTH = 300
AUDIT_DETAIL_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class TokenView:
    id: str
    node_id: str
    status: str
    # Set on incident tokens only.
    incident_kind: str | None = None
    incident_reason: str | None = None
    # When the token came to rest; None only for tokens stored before this was recorded.
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceView:
    id: str
    definition_id: str
    status: str
    tenant_id: str
    tokens: tuple[TokenView, ...]
    definition_version: int
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    id: str
    definition_id: str
    status: str


@dataclass(frozen=True, slots=True)
class InstancePage:
    instances: tuple[InstanceSummary, ...]
    next_page_token: str = ""


@dataclass
class DefinitionCache:
    """Parsed definition versions by primary key; versions never change, so entries never go stale."""

    capacity: int = 512
    _entries: OrderedDict[int, Definition] = field(default_factory=OrderedDict)
    _lock: Lock = field(default_factory=Lock)

    def get(self, conn: Session, pk: int, content: str | None = None) -> Definition:
        with self._lock:
            found = self._entries.get(pk)
            if found is not None:
                self._entries.move_to_end(pk)
                return found
        definition = parse_stored(content if content is not None else repo.definition_content(conn, pk))
        with self._lock:
            self._entries[pk] = definition
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return definition


class ProcessService:
    """Every operation takes the caller; no statement runs without the caller's tenant in it."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock,
        new_id: IdFactory,
        page_token_key: bytes,
        definitions: DefinitionCache | None = None,
    ) -> None:
        self._db = database
        self._clock = clock
        self._new_id = new_id
        # Shared by every worker and host serving this deployment, so a page
        # token from one is good at all (identity.keys.load_or_create_page_token_key).
        self._page_token_key = page_token_key
        self._definitions = definitions or DefinitionCache()

    # --- start -------------------------------------------------------------------------------

    def start_process(
        self,
        caller: Caller,
        definition_id: str,
        variables: dict[str, Json],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        encoded = limits.encode_variables(variables)
        if not limits.MACHINE_NAME.fullmatch(definition_id):
            raise UnknownDefinition()
        request_hash = None
        if idempotency_key is not None:
            if (
                not 0 < len(idempotency_key) <= limits.MAX_IDEMPOTENCY_KEY_LENGTH
                or not idempotency_key.isprintable()
            ):
                raise InvalidArgument("idempotency key must be 1 to 200 printable characters")
            request_hash = hashlib.sha256(
                repo.dump_json([definition_id, sorted(encoded.items())]).encode()
            ).hexdigest()
        try:
            return self._start(caller, definition_id, encoded, idempotency_key, request_hash)
        except IntegrityError:
            # Two starts with one new idempotency key raced; the loser returns the winner's instance.
            if idempotency_key is None:
                raise
            return self._start(caller, definition_id, encoded, idempotency_key, request_hash)

    def _start(
        self,
        caller: Caller,
        definition_id: str,
        encoded: dict[str, str],
        idempotency_key: str | None,
        request_hash: str | None,
    ) -> str:
        # The new instance depends on nothing a concurrent write can change (definitions are
        # only ever added, and the newest version is taken as of this read), so all of its work
        # is done before the writer's turn, which then holds only the statements. On SQLite
        # every writer waits for that turn: what is done outside it is done in parallel.
        with self._db.driver_reading() as conn:
            found = repo.definition_for_tenant(conn, caller.tenant_id, definition_id)
            if found is None:
                raise UnknownDefinition()
            pk, content = found
            definition = self._definitions.get(conn, pk, content)
        now = self._clock()
        # The engine sees the values as stored, so conditions match what getVariables shows.
        step = engine.start(
            definition, {k: json.loads(v) for k, v in encoded.items()}, now=now, new_id=self._new_id
        )
        instance_id = self._new_id()
        values = repo.stored_values(encoded)
        detail = repo.dump_json({"definition_id": definition_id, "definition_pk": pk, **step_detail(step)})
        not_before = now - limits.IDEMPOTENCY_RETENTION
        with self._db.driver_writing() as conn:
            if idempotency_key is not None and request_hash is not None:
                earlier = repo.find_idempotency_key(conn, caller.tenant_id, idempotency_key, not_before)
                if earlier is not None:
                    if earlier[0] != request_hash:
                        raise IdempotencyConflict()
                    return earlier[1]
            seq = repo.insert_instance(
                conn,
                instance_id=instance_id,
                tenant_id=caller.tenant_id,
                definition_id=definition_id,
                definition_pk=pk,
                status=step.status,
                now=now,
            )
            repo.insert_variables(conn, caller.tenant_id, seq, values)
            repo.insert_tokens(conn, seq, caller.tenant_id, step.created)
            if idempotency_key is not None and request_hash is not None:
                repo.store_idempotency_key(
                    conn,
                    tenant_id=caller.tenant_id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    instance_id=instance_id,
                    now=now,
                    not_before=not_before,
                )
            repo.record_audit(
                conn,
                at=now,
                tenant_id=caller.tenant_id,
                actor=caller.actor,
                action="instance.start",
                instance_id=instance_id,
                detail=detail,
            )
            return instance_id

    # --- reads -------------------------------------------------------------------------------

    def get_instance(self, caller: Caller, instance_id: str) -> InstanceView:
        if not limits.is_plausible_id(instance_id):
            raise InstanceNotFound()
        with self._db.driver_reading() as conn:
            found = repo.instance_with_tokens(conn, caller.tenant_id, instance_id)
        if found is None:
            raise InstanceNotFound()
        header = found.header
        return InstanceView(
            id=header.id,
            definition_id=header.definition_id,
            status=header.status.value,
            tenant_id=header.tenant_id,
            tokens=tuple(
                TokenView(t.id, t.node_id, t.status, t.incident_kind, t.incident_reason, t.since)
                for t in found.tokens
            ),
            definition_version=found.definition_version,
            started_at=found.started_at,
            updated_at=found.updated_at,
        )

    def list_instances(
        self,
        caller: Caller,
        *,
        definition_id: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> InstancePage:
        if page_size < 0 or page_size > limits.MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {limits.MAX_PAGE_SIZE}")
        size = page_size or limits.DEFAULT_PAGE_SIZE
        filters = [definition_id or "", status or ""]
        before = decode_page_token(page_token, filters, self._page_token_key) if page_token else None
        if (definition_id and not limits.MACHINE_NAME.fullmatch(definition_id)) or (
            status and status not in INSTANCE_STATUSES
        ):
            # A filter nothing can match: an empty page, as for any other unmatched filter.
            return InstancePage(())
        with self._db.driver_reading() as conn:
            rows = repo.list_instances(
                conn,
                caller.tenant_id,
                definition_id=definition_id or None,
                status=status or None,
                before_seq=before,
                limit=size + 1,
            )
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(rows[-1][0], filters, self._page_token_key) if more else ""
        return InstancePage(tuple(InstanceSummary(r[1], r[2], r[3]) for r in rows), token)

    def get_variables(self, caller: Caller, instance_id: str) -> dict[str, Json]:
        if not limits.is_plausible_id(instance_id):
            return {}
        with self._db.reading() as conn:
            header = repo.find_instance(conn, caller.tenant_id, instance_id)
            if header is None:
                return {}
            return repo.variables_of(conn, header.seq)

    # --- writes ------------------------------------------------------------------------------

    def set_variable(self, caller: Caller, instance_id: str, name: str, value: Json) -> None:
        limits.check_variable_name(name)
        text = limits.encode_value(name, value)
        if not limits.is_plausible_id(instance_id):
            raise InstanceNotWritable()
        stored = repo.stored_value(text)
        with self._db.driver_writing() as conn:
            header = repo.find_instance(conn, caller.tenant_id, instance_id, lock=True)
            if header is None or header.status is not InstanceStatus.RUNNING:
                raise InstanceNotWritable()
            others, size = repo.other_variables_size(conn, header.seq, name)
            limits.check_instance_variables(others + 1, size + len(name) + len(text.encode()))
            repo.upsert_variable(conn, caller.tenant_id, header.seq, name, stored)
            now = self._clock()
            repo.touch_instance(conn, header.seq, now)
            repo.record_audit(
                conn,
                at=now,
                tenant_id=caller.tenant_id,
                actor=caller.actor,
                action="variable.set",
                instance_id=instance_id,
                detail={"name": name, "bytes": len(text)},
            )

    def signal_token(
        self, caller: Caller, token_id: str, variables: Mapping[str, Json] | None = None
    ) -> None:
        """Releases a parked token; `variables` are set first, in the same transaction, all or none."""
        values = stored_variables(variables)
        if not limits.is_plausible_id(token_id):
            raise TokenNotParked()
        with self._db.driver_writing() as conn:
            self._advance_in(conn, caller, token_id, action="token.signal", variables=values)

    def fire_due_token(self, tenant_id: str, token_id: str) -> bool:
        """Fires a due timer or timeout as the scheduler; False when it is no longer due or parked."""
        with self._db.writing() as conn:
            return self._fire_in(conn, [(token_id, tenant_id)]) == 1

    def fire_due_tokens(self, due: Sequence[tuple[str, str]]) -> int:
        """Fires claimed due tokens, given as (token id, tenant), in one transaction; returns how many fired.

        The instances are locked and their live tokens read together, each firing is computed
        by itself, and what they all changed is written in a few statements. A token that is no
        longer due or parked, or whose firing fails, is passed over and its instance is written
        as the other firings of the batch leave it (a failure is logged; the claim's lease runs
        out and a later round tries again). A failing statement rolls the whole batch back and
        propagates.
        """
        with self._db.writing() as conn:
            return self._fire_in(conn, due)

    def _fire_in(self, conn: Connection, due: Sequence[tuple[str, str]]) -> int:
        token_ids = list(dict.fromkeys(t for t, _ in due if limits.is_plausible_id(t)))
        # The instance row locks serialise every advance of one instance: a racing signal
        # of the same token finds it consumed once it gets the lock, and so does this.
        headers = repo.lock_instances_of_tokens(conn, token_ids)
        running = {h.seq: h for h in headers.values() if h.status is InstanceStatus.RUNNING}
        live = repo.live_tokens_of(conn, sorted(running))
        now = self._clock()
        instances: dict[int, _FiredInstance] = {}
        audit: list[repo.AuditRecord] = []
        for token_id, tenant_id in due:
            header = headers.get(token_id)
            if header is None or header.tenant_id != tenant_id or header.seq not in running:
                continue
            instance = instances.get(header.seq)
            if instance is None:
                instance = instances[header.seq] = _FiredInstance(header, live[header.seq])
            if instance.status is not InstanceStatus.RUNNING:
                continue  # ended by an earlier firing in this batch
            try:
                step = engine.fire_due(
                    self._definitions.get(conn, header.definition_pk),
                    instance.tokens,
                    repo.StoredVariables(conn, header.seq),
                    token_id,
                    now=now,
                    new_id=self._new_id,
                )
            except TokenNotParked:
                continue
            except Exception:  # one instance's failure stays its own
                _log.exception("firing token %s of instance %s failed", token_id, header.id)
                continue
            instance.apply(step)
            detail: dict[str, Json] = {"token_id": token_id, **step_detail(step)}
            audit.append(repo.AuditRecord(tenant_id, SCHEDULER_ACTOR, "token.fire", header.id, detail))
        _write_fired(conn, list(instances.values()), now)
        repo.record_audits(conn, now, audit)
        return len(audit)

    def _advance_in(
        self,
        conn: Session,
        caller: Caller,
        token_id: str,
        *,
        action: str,
        variables: Mapping[str, repo.StoredValue] | None = None,
        resolve: engine.Advance | None = None,
    ) -> InstanceStatus:
        """One advance under the instance lock; with `resolve`, of an incident token by that engine call."""
        missing: type[Exception] = TokenNotParked if resolve is None else TokenNotInIncident
        # The instance row lock serialises every advance of one instance: a racing
        # signal of the same token finds it consumed once it gets the lock.
        header = repo.lock_instance_of_token(conn, caller.tenant_id, token_id)
        if header is None:
            raise missing()
        seq = header.seq
        if header.status is not InstanceStatus.RUNNING:
            raise missing()
        tokens = repo.live_tokens(conn, seq)
        if resolve is not None and not any(
            t.id == token_id and t.status is TokenStatus.INCIDENT for t in tokens
        ):
            raise TokenNotInIncident()
        if variables:
            write_variables(conn, caller.tenant_id, seq, variables)
        stored = repo.StoredVariables(conn, seq)
        definition = self._definitions.get(conn, header.definition_pk)
        now = self._clock()
        advance = resolve or engine.signal
        step = advance(definition, tokens, stored, token_id, now=now, new_id=self._new_id)
        if repo.delete_tokens(conn, seq, step.consumed) != len(step.consumed):
            # Cannot happen under the lock; refuse rather than half-apply.
            raise TokenNotParked()
        repo.insert_tokens(conn, seq, caller.tenant_id, step.created)
        if step.status is not header.status:
            repo.set_instance_status(conn, seq, step.status, now)
        else:
            repo.touch_instance(conn, seq, now)
        repo.record_audit(
            conn,
            at=now,
            tenant_id=caller.tenant_id,
            actor=caller.actor,
            action=action,
            instance_id=header.id,
            detail={"token_id": token_id, **variable_names(variables), **step_detail(step)},
        )
        return step.status

    def resolve_in(
        self,
        conn: Connection,
        caller: Caller,
        token_id: str,
        *,
        action: str,
        resolve: engine.Advance,
        variables: Mapping[str, repo.StoredValue] | None,
    ) -> InstanceStatus:
        """Resolves an incident token in the caller's transaction: TokenNotInIncident when it is not one."""
        return self._advance_in(conn, caller, token_id, action=action, variables=variables, resolve=resolve)


class _FiredInstance:
    """One instance through a batch of firings: its tokens as the batch leaves them so far."""

    __slots__ = ("before", "fired", "header", "status", "tokens")

    def __init__(self, header: repo.InstanceHeader, tokens: list[Token]) -> None:
        self.header = header
        self.before = tokens
        self.tokens = tokens
        self.status = header.status
        self.fired = False

    def apply(self, step: engine.Step) -> None:
        consumed = set(step.consumed)
        kept = [t for t in self.tokens if t.id not in consumed]
        self.tokens = sorted([*kept, *step.created], key=lambda t: t.ordinal) if step.created else kept
        self.status = step.status
        self.fired = True


def _write_fired(conn: Connection, instances: list[_FiredInstance], now: datetime) -> None:
    """Writes what a batch of firings changed: each instance's tokens and status as the batch left them."""
    gone: list[str] = []
    created: list[tuple[int, str, Token]] = []
    touched: list[int] = []
    by_status: dict[InstanceStatus, list[int]] = {}
    for instance in instances:
        if not instance.fired:
            continue
        seq, tenant_id = instance.header.seq, instance.header.tenant_id
        after = {t.id for t in instance.tokens}
        before = {t.id for t in instance.before}
        gone += [t.id for t in instance.before if t.id not in after]
        created += [(seq, tenant_id, t) for t in instance.tokens if t.id not in before]
        if instance.status is instance.header.status:
            touched.append(seq)
        else:
            by_status.setdefault(instance.status, []).append(seq)
    if repo.delete_tokens_by_id(conn, gone) != len(gone):
        # Cannot happen under the locks; refuse rather than half-apply.
        raise RuntimeError("live tokens changed under their instances' locks")
    repo.insert_tokens_of(conn, created)
    for status, seqs in by_status.items():
        repo.set_status_of(conn, seqs, status, now)
    repo.touch_instances(conn, touched, now)


def stored_variables(variables: Mapping[str, Json] | None) -> dict[str, repo.StoredValue] | None:
    """Variables a signal or a resolution sets, checked and as stored; None for none."""
    return repo.stored_values(limits.encode_variables(dict(variables))) if variables else None


def write_variables(
    conn: Session, tenant_id: str, instance_seq: int, values: Mapping[str, repo.StoredValue]
) -> None:
    """Sets checked variables of a running instance within its published total, or LimitExceeded."""
    sizes = repo.variable_sizes(conn, instance_seq)
    for name, value in values.items():
        sizes[name] = len(name) + len(value.text.encode())
    limits.check_instance_variables(len(sizes), sum(sizes.values()))
    for name, value in values.items():
        repo.upsert_variable(conn, tenant_id, instance_seq, name, value)


def variable_names(encoded: Mapping[str, object] | None) -> dict[str, Json]:
    """The audit detail naming the variables a step set (their values stay out of the trail)."""
    return {"variables": sorted(encoded)} if encoded else {}


def step_detail(step: engine.Step) -> dict[str, Json]:
    """What a step did, for the audit trail, within AUDIT_DETAIL_LIMIT however large the step."""
    incidents: dict[str, int] = {}
    for token in step.created:
        if token.incident is not None:
            incidents[token.incident.value] = incidents.get(token.incident.value, 0) + 1
    listed = AUDIT_LISTED_TOKENS
    while True:
        detail: dict[str, Json] = {
            "consumed": list(step.consumed[:listed]),
            "created": [_token_detail(t) for t in step.created[:listed]],
            "status": step.status.value,
        }
        if len(step.consumed) > listed or len(step.created) > listed:
            detail["consumed_count"] = len(step.consumed)
            detail["created_count"] = len(step.created)
        if incidents:
            detail["incidents"] = incidents
        if listed == 0 or len(repo.dump_json(detail).encode()) <= AUDIT_DETAIL_LIMIT - 1024:
            # The margin leaves room for what the caller adds (ids and the definition).
            return detail
        listed //= 2


def _token_detail(token: Token) -> dict[str, Json]:
    detail: dict[str, Json] = {"id": token.id, "node_id": token.node_id, "status": token.status.value}
    if token.incident is not None:
        detail["incident_kind"] = token.incident.value
        reason = token.reason or ""
        if len(reason) > AUDIT_REASON_LENGTH:
            reason = reason[: AUDIT_REASON_LENGTH - 3] + "..."
        detail["incident_reason"] = reason
    return detail


# A page token is the listing position (for most listings the sequence number
# of the last row shown) and a MAC over it and the listing's filters: opaque to
# clients, and anything the server did not issue for this listing is refused.
_PAGE_TOKEN_CONTEXT = b"orchestra page token v1\x00"
_POSITION_BYTES = 8
_PAGE_TOKEN_MAC_BYTES = 16
# The sequence column is a signed 64-bit integer.
_MAX_POSITION = 2**63 - 1
# No position is longer: a token past this is refused before its MAC is computed.
_MAX_POSITION_BYTES = 256


def _page_token_mac(position: bytes, filters: list[str], key: bytes) -> bytes:
    # JSON keeps any two different filter lists apart.
    message = _PAGE_TOKEN_CONTEXT + position + json.dumps(filters).encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:_PAGE_TOKEN_MAC_BYTES]


def encode_page_position(position: bytes, filters: list[str], key: bytes) -> str:
    """A page token for a listing position of any shape, bound to the listing's filters."""
    raw = position + _page_token_mac(position, filters, key)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_position(token: str, filters: list[str], key: bytes) -> bytes:
    """The position a page token issued for these filters holds; InvalidArgument for anything else."""
    if len(token) <= 4 * (_MAX_POSITION_BYTES + _PAGE_TOKEN_MAC_BYTES) // 3 + 4:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raw = b""
        # Only the exact text issued: the decoder skips characters outside the
        # alphabet, which would let many texts stand for one token.
        canonical = base64.urlsafe_b64encode(raw).decode().rstrip("=") == token
        if canonical and _PAGE_TOKEN_MAC_BYTES < len(raw) <= _MAX_POSITION_BYTES + _PAGE_TOKEN_MAC_BYTES:
            position, mac = raw[:-_PAGE_TOKEN_MAC_BYTES], raw[-_PAGE_TOKEN_MAC_BYTES:]
            if hmac.compare_digest(mac, _page_token_mac(position, filters, key)):
                return position
    raise InvalidArgument("page_token was not issued for this listing")


def encode_page_token(seq: int, filters: list[str], key: bytes) -> str:
    return encode_page_position(seq.to_bytes(_POSITION_BYTES, "big"), filters, key)


def decode_page_token(token: str, filters: list[str], key: bytes) -> int:
    position = decode_page_position(token, filters, key)
    seq = int.from_bytes(position, "big") if len(position) == _POSITION_BYTES else 0
    if not 0 < seq <= _MAX_POSITION:
        raise InvalidArgument("page_token was not issued for this listing")
    return seq
