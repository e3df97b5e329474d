"""The operations use cases: deploy and inspect definitions, find, inspect and cancel instances,
list and resolve incidents, in batches too; every one scoped to the caller's tenant.

Another tenant's ids answer exactly as ids that never existed. Every state change is one
transaction (a batch, one per instance or incident) and lands in the audit trail with the
caller as actor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar

from orchestra_server.engine import engine
from orchestra_server.engine.definition import to_data
from orchestra_server.engine.model import InstanceStatus, Json, NodeType, TokenStatus
from orchestra_server.errors import (
    InstanceNotFound,
    InstanceNotWritable,
    InvalidArgument,
    NotFound,
    OrchestraError,
    PermissionDenied,
    TokenNotInIncident,
)
from orchestra_server.identity.consumers import DEPLOY_SHARED_PERMISSION
from orchestra_server.service import limits
from orchestra_server.service.definitions import DefinitionService, load_definition_text
from orchestra_server.service.processes import (
    AUDIT_LISTED_TOKENS,
    AUDIT_REASON_LENGTH,
    INSTANCE_STATUSES,
    Caller,
    Clock,
    DefinitionCache,
    IdFactory,
    ProcessService,
    decode_page_position,
    decode_page_token,
    encode_page_position,
    encode_page_token,
    stored_variables,
)
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.schema import SHARED_TENANT_KEY

T = TypeVar("T")

RESOLVE_ACTIONS = ("retry", "skip", "cancel_branch")
MAX_BATCH = 10_000
DEFAULT_BATCH = 1_000
# A batch outcome lists this many of its failures.
BATCH_ERRORS_LISTED = 5
# The most `variable` filters one search takes.
MAX_VARIABLE_FILTERS = 16
# A cancel's reason, for people.
MAX_REASON_LENGTH = 1000
SCOPES = ("tenant", "shared")

_RESOLVE: dict[str, engine.Advance] = {
    "retry": engine.signal,
    "skip": engine.skip,
    "cancel_branch": engine.cancel_branch,
}
# RFC 3339 date-time: a full date, a time with seconds, and a zone (Z or an offset).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    definition_id: str
    version: int
    changed: bool
    scope: str


@dataclass(frozen=True, slots=True)
class DefinitionVersionView:
    version: int
    deployed_at: datetime
    running_instances: int


@dataclass(frozen=True, slots=True)
class DefinitionSummaryView:
    definition_id: str
    latest_version: int
    label: str
    scope: str
    running_instances: int
    open_incidents: int
    versions: tuple[DefinitionVersionView, ...]


@dataclass(frozen=True, slots=True)
class GraphNode:
    id: str
    type: str
    label: str
    join: str
    split: str
    threshold: int
    timer_after: str
    timer_until: str
    timeout_after: str
    timeout_to: str
    parked: int
    waiting: int
    incident: int


@dataclass(frozen=True, slots=True)
class GraphFlow:
    order: int
    from_node: str
    to_node: str
    condition: str
    default: bool
    timeout: bool


@dataclass(frozen=True, slots=True)
class DefinitionGraph:
    definition_id: str
    version: int
    latest_version: int
    label: str
    scope: str
    deployed_at: datetime
    nodes: tuple[GraphNode, ...]
    flows: tuple[GraphFlow, ...]


@dataclass(frozen=True, slots=True)
class InstanceFilter:
    definition_id: str | None = None
    version: int | None = None
    status: str | None = None
    has_incident: bool | None = None
    node_id: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    variables: tuple[tuple[str, Json], ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        definition_id: str = "",
        version: int = 0,
        status: str = "",
        has_incident: bool | None = None,
        node_id: str = "",
        started_after: str = "",
        started_before: str = "",
        variable: Sequence[str] = (),
    ) -> InstanceFilter:
        """From the wire's strings; InvalidArgument naming the parameter for anything malformed."""
        if definition_id and not limits.MACHINE_NAME.fullmatch(definition_id):
            raise InvalidArgument("definition_id must be a definition id (a-z, 0-9 and _, at most 64)")
        if version < 0:
            raise InvalidArgument("version must be 1 or more")
        if version and not definition_id:
            raise InvalidArgument("version needs definition_id")
        if status and status not in INSTANCE_STATUSES:
            raise InvalidArgument("status must be one of " + ", ".join(sorted(INSTANCE_STATUSES)))
        if node_id and not limits.MACHINE_NAME.fullmatch(node_id):
            raise InvalidArgument("node_id must be a node id (a-z, 0-9 and _, at most 64)")
        if len(variable) > MAX_VARIABLE_FILTERS:
            raise InvalidArgument(f"variable may be given at most {MAX_VARIABLE_FILTERS} times")
        return cls(
            definition_id=definition_id or None,
            version=version or None,
            status=status or None,
            has_incident=has_incident,
            node_id=node_id or None,
            started_after=_parse_time(started_after, "started_after"),
            started_before=_parse_time(started_before, "started_before"),
            variables=tuple(_parse_variable(item) for item in variable),
        )


def _parse_time(text: str, parameter: str) -> datetime | None:
    if not text:
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"{parameter} must be an RFC 3339 time, such as 2026-01-31T12:00:00Z")
    date, clock, fraction, zone = match.groups()
    # Python reads at most microseconds; finer digits cannot change a stored time.
    micro = f".{(fraction or '0')[:6]:0<6}"
    try:
        value = datetime.fromisoformat(f"{date}T{clock}{micro}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        raise InvalidArgument(f"{parameter} must be an RFC 3339 time, such as 2026-01-31T12:00:00Z") from None
    return value.astimezone(UTC)


def _parse_variable(item: str) -> tuple[str, Json]:
    name, sep, text = item.partition("=")
    if not sep or not limits.VARIABLE_NAME.fullmatch(name):
        raise InvalidArgument("variable must be name=<JSON value>, the name a variable name")
    if len(text.encode("utf-8", errors="surrogatepass")) > limits.MAX_VARIABLE_BYTES:
        raise InvalidArgument(f"variable {name}: the value is larger than {limits.MAX_VARIABLE_BYTES} bytes")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
        limits.encode_value(name, value)
    except (ValueError, RecursionError, OrchestraError) as exc:
        problem = str(exc) if isinstance(exc, OrchestraError) else "the value is not JSON"
        raise InvalidArgument(f"variable {name}: {problem}") from None
    return name, value


def _refuse_constant(text: str) -> Json:
    raise ValueError(f"{text} is not JSON")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_page_token: str = ""


# The items of paged lists are named tuples: as immutable as a frozen dataclass, but built in
# a third of the time, and a page holds up to 1,000 of them.
class InstanceOverviewView(NamedTuple):
    id: str
    definition_id: str
    definition_version: int
    status: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    open_incidents: int


@dataclass(frozen=True, slots=True)
class TokenDetailView:
    id: str
    node_id: str
    status: str
    since: datetime | None
    due_at: datetime | None
    incident_kind: str | None
    incident_reason: str | None


@dataclass(frozen=True, slots=True)
class InstanceDetailView:
    id: str
    definition_id: str
    definition_version: int
    status: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    variables: dict[str, Json]
    tokens: tuple[TokenDetailView, ...]


class HistoryEntryView(NamedTuple):
    at: datetime
    actor: str
    action: str
    nodes: tuple[str, ...]
    tokens_consumed: tuple[str, ...]
    tokens_created: tuple[str, ...]
    variables: tuple[str, ...]
    status: str
    incidents: tuple[str, ...]
    reason: str


class IncidentView(NamedTuple):
    instance_id: str
    definition_id: str
    definition_version: int
    token_id: str
    node_id: str
    kind: str
    reason: str
    since: datetime | None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    matched: int
    done: int
    skipped: int
    failed: int
    errors: tuple[str, ...]


class OperationsService:
    """Every operation takes the caller; no statement runs without the caller's tenant in it."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock,
        new_id: IdFactory,
        page_token_key: bytes,
        processes: ProcessService,
        definitions: DefinitionService,
    ) -> None:
        self._db = database
        self._clock = clock
        self._new_id = new_id
        self._page_token_key = page_token_key
        self._processes = processes
        self._definitions = definitions
        self._parsed = DefinitionCache()

    # --- definitions -----------------------------------------------------------------------

    def deploy_definition(
        self, caller: Caller, source: str, *, scope: str = "tenant", source_name: str = "api"
    ) -> DeployOutcome:
        scope = scope or "tenant"
        if scope not in SCOPES:
            raise InvalidArgument("scope must be tenant or shared")
        if scope == "shared" and DEPLOY_SHARED_PERMISSION not in caller.permissions:
            raise PermissionDenied("deploying a shared definition needs the permission to")
        loaded = load_definition_text(source, source=source_name)
        tenant = caller.tenant_id if scope == "tenant" else None
        (result,) = self._definitions.deploy_loaded([loaded], tenant=tenant, actor=caller.actor)
        return DeployOutcome(result.definition_id, result.version, result.changed, scope)

    def list_definitions(self, caller: Caller) -> tuple[DefinitionSummaryView, ...]:
        with self._db.reading() as conn:
            visible = repo.visible_definitions(conn, caller.tenant_id)
            running = repo.running_by_definition_pk(conn, caller.tenant_id)
            incidents = repo.incidents_by_definition(conn, caller.tenant_id)
            summaries = []
            for definition_id, versions in _by_definition(visible):
                latest = versions[-1]
                definition = self._parsed.get(conn, latest.pk)
                summaries.append(
                    DefinitionSummaryView(
                        definition_id=definition_id,
                        latest_version=latest.version,
                        label=definition.label or "",
                        scope=_scope(latest.tenant_key),
                        running_instances=sum(
                            running.get(v.pk, 0) for v in visible if v.definition_id == definition_id
                        ),
                        open_incidents=incidents.get(definition_id, 0),
                        versions=tuple(
                            DefinitionVersionView(v.version, v.deployed_at, running.get(v.pk, 0))
                            for v in versions
                        ),
                    )
                )
        return tuple(summaries)

    def get_definition(self, caller: Caller, definition_id: str, version: int = 0) -> DefinitionGraph:
        if not limits.MACHINE_NAME.fullmatch(definition_id) or version < 0:
            raise NotFound("definition not found")
        with self._db.reading() as conn:
            versions = dict(_by_definition(repo.visible_definitions(conn, caller.tenant_id))).get(
                definition_id
            )
            chosen = [v for v in versions or () if v.version == version or not version]
            if not versions or not chosen:
                raise NotFound("definition not found")
            stored = chosen[-1]
            definition = self._parsed.get(conn, stored.pk)
            counts = repo.tokens_by_node(conn, caller.tenant_id, stored.pk)
        data = to_data(definition)["nodes"]
        nodes = []
        for node in definition.nodes.values():
            entry = data[node.id]
            timeout = entry.get("timeout", {})
            nodes.append(
                GraphNode(
                    id=node.id,
                    type=node.type.value,
                    label=node.label or "",
                    join=node.join.value,
                    split=node.split.value,
                    threshold=node.threshold or 0,
                    timer_after=entry.get("after", "") if node.type is NodeType.TIMER else "",
                    timer_until=node.until or "",
                    timeout_after=timeout.get("after", ""),
                    timeout_to=timeout.get("to", ""),
                    parked=counts.get((node.id, TokenStatus.PARKED.value), 0),
                    waiting=counts.get((node.id, TokenStatus.WAITING.value), 0),
                    incident=counts.get((node.id, TokenStatus.INCIDENT.value), 0),
                )
            )
        flows = tuple(
            GraphFlow(f.index, f.source, f.target, f.when or "", f.default, f.timeout)
            for f in definition.flows
        )
        return DefinitionGraph(
            definition_id=definition_id,
            version=stored.version,
            latest_version=versions[-1].version,
            label=definition.label or "",
            scope=_scope(stored.tenant_key),
            deployed_at=stored.deployed_at,
            nodes=tuple(nodes),
            flows=flows,
        )

    # --- instances -------------------------------------------------------------------------

    def search_instances(
        self, caller: Caller, query: InstanceFilter, *, page_size: int = 0, page_token: str = ""
    ) -> Page[InstanceOverviewView]:
        size = _page_size(page_size)
        stored_query = _stored_query(query)
        filters = ["instances.search", caller.tenant_id, _filter_key(stored_query)]
        before = decode_page_token(page_token, filters, self._page_token_key) if page_token else None
        with self._db.reading() as conn:
            rows = repo.search_instances(
                conn, caller.tenant_id, stored_query, before_seq=before, limit=size + 1
            )
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(rows[-1].seq, filters, self._page_token_key) if more else ""
        return Page(tuple(_overview(r) for r in rows), token)

    def get_instance_detail(self, caller: Caller, instance_id: str) -> InstanceDetailView:
        if not limits.is_plausible_id(instance_id):
            raise InstanceNotFound()
        with self._db.reading() as conn:
            found = repo.instance_with_tokens(conn, caller.tenant_id, instance_id)
            if found is None:
                raise InstanceNotFound()
            variables = repo.variables_of(conn, found.header.seq)
        return InstanceDetailView(
            id=found.header.id,
            definition_id=found.header.definition_id,
            definition_version=found.definition_version,
            status=found.header.status.value,
            started_at=found.started_at,
            updated_at=found.updated_at,
            ended_at=found.ended_at,
            variables=variables,
            tokens=tuple(
                TokenDetailView(
                    t.id, t.node_id, t.status, t.since, t.due_at, t.incident_kind, t.incident_reason
                )
                for t in found.tokens
            ),
        )

    def get_instance_history(
        self, caller: Caller, instance_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Page[HistoryEntryView]:
        size = _page_size(page_size)
        filters = ["instances.history", caller.tenant_id, instance_id]
        after = decode_page_token(page_token, filters, self._page_token_key) if page_token else None
        if not limits.is_plausible_id(instance_id):
            raise InstanceNotFound()
        with self._db.reading() as conn:
            if repo.find_instance(conn, caller.tenant_id, instance_id) is None:
                raise InstanceNotFound()
            rows = repo.instance_history(conn, caller.tenant_id, instance_id, after_seq=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(rows[-1].seq, filters, self._page_token_key) if more else ""
        return Page(tuple(_history_entry(r) for r in rows), token)

    def cancel_instance(self, caller: Caller, instance_id: str, reason: str = "") -> None:
        _check_reason(reason)
        if not limits.is_plausible_id(instance_id):
            raise InstanceNotFound()
        with self._db.writing() as conn:
            header = repo.find_instance(conn, caller.tenant_id, instance_id, lock=True)
            if header is None:
                raise InstanceNotFound()
            self._cancel_in(conn, caller, header, reason)

    def _cancel_in(self, conn: Any, caller: Caller, header: repo.InstanceHeader, reason: str) -> None:
        """Cancels a locked instance: every live token (markers too) goes with its timers."""
        if header.status is not InstanceStatus.RUNNING:
            raise InstanceNotWritable()
        consumed = [t.id for t in repo.live_tokens(conn, header.seq)]
        repo.delete_instance_tokens(conn, header.seq)
        now = self._clock()
        repo.set_instance_status(conn, header.seq, InstanceStatus.CANCELLED, now)
        detail: dict[str, Json] = {
            "reason": reason,
            "consumed": consumed[:AUDIT_LISTED_TOKENS],
            "created": [],
            "status": InstanceStatus.CANCELLED.value,
        }
        if len(consumed) > AUDIT_LISTED_TOKENS:
            detail["consumed_count"] = len(consumed)
        repo.record_audit(
            conn,
            at=now,
            tenant_id=caller.tenant_id,
            actor=caller.actor,
            action="instance.cancel",
            instance_id=header.id,
            detail=detail,
        )

    def cancel_instances(
        self, caller: Caller, query: InstanceFilter, *, reason: str = "", dry_run: bool = False, max: int = 0
    ) -> BatchOutcome:
        limit = _batch_size(max)
        _check_reason(reason)
        # Only running instances can be cancelled: the others neither match nor count.
        if query.status not in (None, InstanceStatus.RUNNING.value):
            return BatchOutcome(0, 0, 0, 0, ())
        stored_query = replace(_stored_query(query), status=InstanceStatus.RUNNING.value)
        with self._db.reading() as conn:
            matched = repo.search_instances(
                conn, caller.tenant_id, stored_query, before_seq=None, limit=limit
            )
        if dry_run:
            return BatchOutcome(len(matched), 0, 0, 0, ())
        batch = _Batch(len(matched))
        for row in matched:
            try:
                with self._db.writing() as conn:
                    header = repo.find_instance(conn, caller.tenant_id, row.id, lock=True)
                    # It qualifies still (under the lock) or it is passed over.
                    if (
                        header is None
                        or header.status is not InstanceStatus.RUNNING
                        or not repo.search_instances(
                            conn, caller.tenant_id, stored_query, before_seq=None, limit=1, only_seq=row.seq
                        )
                    ):
                        batch.skipped += 1
                        continue
                    self._cancel_in(conn, caller, header, reason)
                batch.done += 1
            except OrchestraError as exc:
                batch.fail(row.id, exc)
        return batch.outcome()

    # --- incidents -------------------------------------------------------------------------

    def list_incidents(
        self,
        caller: Caller,
        *,
        definition_id: str = "",
        node_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[IncidentView]:
        size = _page_size(page_size)
        _check_incident_filters(definition_id, node_id)
        filters = ["incidents.list", caller.tenant_id, definition_id, node_id]
        after = _incident_position(page_token, filters, self._page_token_key) if page_token else None
        with self._db.reading() as conn:
            rows = repo.list_incidents(
                conn,
                caller.tenant_id,
                definition_id=definition_id or None,
                node_id=node_id or None,
                after=after,
                limit=size + 1,
            )
        more = len(rows) > size
        rows = rows[:size]
        token = _incident_token(rows[-1], filters, self._page_token_key) if more else ""
        return Page(tuple(_incident(r) for r in rows), token)

    def resolve_incident(
        self, caller: Caller, token_id: str, action: str, variables: Mapping[str, Json] | None = None
    ) -> str:
        """Retries, skips or cancels the branch of an incident token; the instance status after."""
        if action not in _RESOLVE:
            raise InvalidArgument("action must be one of " + ", ".join(RESOLVE_ACTIONS))
        values = stored_variables(variables)
        if not limits.is_plausible_id(token_id):
            raise TokenNotInIncident()
        with self._db.writing() as conn:
            status = self._processes.resolve_in(
                conn,
                caller,
                token_id,
                action=f"incident.{action}",
                resolve=_RESOLVE[action],
                variables=values,
            )
        return status.value

    def retry_incidents(
        self,
        caller: Caller,
        *,
        definition_id: str = "",
        node_id: str = "",
        dry_run: bool = False,
        max: int = 0,
    ) -> BatchOutcome:
        limit = _batch_size(max)
        _check_incident_filters(definition_id, node_id)
        with self._db.reading() as conn:
            matched = repo.list_incidents(
                conn,
                caller.tenant_id,
                definition_id=definition_id or None,
                node_id=node_id or None,
                after=None,
                limit=limit,
            )
        if dry_run:
            return BatchOutcome(len(matched), 0, 0, 0, ())
        batch = _Batch(len(matched))
        for row in matched:
            try:
                with self._db.writing() as conn:
                    self._processes.resolve_in(
                        conn,
                        caller,
                        row.token_id,
                        action="incident.retry",
                        resolve=engine.signal,
                        variables=None,
                    )
                batch.done += 1
            except TokenNotInIncident:
                # Resolved (or its instance cancelled) since it was listed.
                batch.skipped += 1
            except OrchestraError as exc:
                batch.fail(row.token_id, exc)
        return batch.outcome()


class _Batch:
    def __init__(self, matched: int) -> None:
        self.matched = matched
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.errors: list[str] = []

    def fail(self, item: str, exc: OrchestraError) -> None:
        self.failed += 1
        if len(self.errors) < BATCH_ERRORS_LISTED:
            self.errors.append(f"{item}: {exc}")

    def outcome(self) -> BatchOutcome:
        return BatchOutcome(self.matched, self.done, self.skipped, self.failed, tuple(self.errors))


def _scope(tenant_key: str) -> str:
    return "shared" if tenant_key == SHARED_TENANT_KEY else "tenant"


def _by_definition(
    visible: Sequence[repo.VisibleDefinition],
) -> list[tuple[str, list[repo.VisibleDefinition]]]:
    """Each definition id with the versions the tenant gets, oldest first: its own when it has
    any (they win when starting an instance too), else the shared ones."""
    grouped: dict[str, dict[str, list[repo.VisibleDefinition]]] = {}
    for item in visible:
        grouped.setdefault(item.definition_id, {}).setdefault(item.tenant_key, []).append(item)
    result = []
    for definition_id, scopes in grouped.items():
        own = [versions for key, versions in scopes.items() if key != SHARED_TENANT_KEY]
        result.append((definition_id, own[0] if own else scopes[SHARED_TENANT_KEY]))
    return sorted(result)


def _page_size(page_size: int) -> int:
    if page_size < 0 or page_size > limits.MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {limits.MAX_PAGE_SIZE}")
    return page_size or limits.DEFAULT_PAGE_SIZE


def _batch_size(max: int) -> int:
    if max < 0 or max > MAX_BATCH:
        raise InvalidArgument(f"max must be between 1 and {MAX_BATCH}")
    return max or DEFAULT_BATCH


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"reason must be at most {MAX_REASON_LENGTH} characters")


def _check_incident_filters(definition_id: str, node_id: str) -> None:
    if definition_id and not limits.MACHINE_NAME.fullmatch(definition_id):
        raise InvalidArgument("definition_id must be a definition id (a-z, 0-9 and _, at most 64)")
    if node_id and not limits.MACHINE_NAME.fullmatch(node_id):
        raise InvalidArgument("node_id must be a node id (a-z, 0-9 and _, at most 64)")


def _stored_query(query: InstanceFilter) -> repo.InstanceQuery:
    return repo.InstanceQuery(
        definition_id=query.definition_id,
        version=query.version,
        status=query.status,
        has_incident=query.has_incident,
        node_id=query.node_id,
        started_after=query.started_after,
        started_before=query.started_before,
        variables=tuple((name, repo.value_digest(repo.dump_json(value))) for name, value in query.variables),
    )


def _filter_key(query: repo.InstanceQuery) -> str:
    """The filters as one text, so a page token is bound to exactly these."""
    return json.dumps(
        [
            query.definition_id,
            query.version,
            query.status,
            query.has_incident,
            query.node_id,
            query.started_after.isoformat() if query.started_after else None,
            query.started_before.isoformat() if query.started_before else None,
            [list(pair) for pair in query.variables],
        ]
    )


def _incident_token(row: repo.IncidentRow, filters: list[str], key: bytes) -> str:
    # Oldest first by since, then token id: the position is both.
    position = json.dumps([row.since.isoformat(), row.token_id]).encode()
    return encode_page_position(position, filters, key)


def _incident_position(token: str, filters: list[str], key: bytes) -> tuple[datetime, str]:
    position = decode_page_position(token, filters, key)
    since, token_id = json.loads(position)
    return datetime.fromisoformat(since), str(token_id)


# The views are built positionally, in their fields' order, from the rows' named fields: a page
# holds up to 1,000 of them, and keyword arguments cost a named tuple twice the time.
def _overview(row: repo.InstanceOverview) -> InstanceOverviewView:
    return InstanceOverviewView(
        row.id,
        row.definition_id,
        row.definition_version,
        row.status,
        row.started_at,
        row.updated_at,
        row.ended_at,
        row.open_incidents,
    )


def _incident(row: repo.IncidentRow) -> IncidentView:
    return IncidentView(
        row.instance_id,
        row.definition_id,
        row.definition_version,
        row.token_id,
        row.node_id,
        row.kind,
        row.reason,
        row.since,
    )


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def _history_entry(entry: repo.AuditEntry) -> HistoryEntryView:
    """An audit row as history: what every kind of step records, read the same way."""
    detail = entry.detail
    created = [item for item in detail.get("created", ()) if isinstance(item, dict)]
    nodes: list[str] = []
    for item in created:
        node = str(item.get("node_id", ""))
        if node and node not in nodes:
            nodes.append(node)
    variables = _strings(detail.get("variables"))
    if not variables and isinstance(detail.get("name"), str):
        variables = (detail["name"],)
    incidents = detail.get("incidents")
    reason = detail.get("reason")
    return HistoryEntryView(
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        nodes=tuple(nodes),
        tokens_consumed=_strings(detail.get("consumed")),
        tokens_created=tuple(str(item.get("id", "")) for item in created),
        variables=variables,
        status=str(detail.get("status", "")),
        incidents=tuple(sorted(incidents)) if isinstance(incidents, dict) else (),
        reason=reason[:AUDIT_REASON_LENGTH] if isinstance(reason, str) else "",
    )
