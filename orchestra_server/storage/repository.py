"""Statements over one open transaction: repositories never commit, the caller's transaction does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, and_, delete, func, insert, select
from sqlalchemy import exc as sa_exc

from orchestra_server.engine.model import IncidentKind, InstanceStatus, Json, Retry, Token, TokenStatus
from orchestra_server.storage.schema import (
    AuditRow,
    DefinitionRow,
    IdempotencyKeyRow,
    InstanceRow,
    TokenRow,
    VariableRow,
)
from orchestra_server.storage.statements import (
    Session,
    Sql,
    bind_time,
    execute,
    execute_many,
    is_sqlite,
    read_time,
)

# Re-exported: the services fingerprint requests with the very text storage keeps.
from orchestra_server.wire.json_text import dump_json as dump_json

definitions_t = cast(Table, DefinitionRow.__table__)
instances_t = cast(Table, InstanceRow.__table__)
tokens_t = cast(Table, TokenRow.__table__)
variables_t = cast(Table, VariableRow.__table__)
audit_t = cast(Table, AuditRow.__table__)
idempotency_t = cast(Table, IdempotencyKeyRow.__table__)


# The statements on every request: run on the driver's cursor (see statements.py).
SQL_DEFINITION_FOR_TENANT = Sql(
    "SELECT pk, content FROM definitions WHERE definition_id = :definition_id AND tenant_key IN (:tenant, '')"
    " ORDER BY CASE WHEN tenant_key = '' THEN 1 ELSE 0 END, version DESC LIMIT 1"
)
SQL_DEFINITION_CONTENT = Sql("SELECT content FROM definitions WHERE pk = :pk")
SQL_INSERT_INSTANCE = Sql(
    "INSERT INTO instances (id, tenant_id, definition_id, definition_pk, status, created_at, updated_at)"
    " VALUES (:id, :tenant, :definition_id, :definition_pk, :status, :now, :now) RETURNING seq"
)
SQL_FIND_INSTANCE = Sql(
    "SELECT seq, id, tenant_id, definition_id, definition_pk, status"
    " FROM instances WHERE id = :id AND tenant_id = :tenant"
)
SQL_FIND_INSTANCE_LOCKED = Sql(
    "SELECT seq, id, tenant_id, definition_id, definition_pk, status"
    " FROM instances WHERE id = :id AND tenant_id = :tenant FOR UPDATE"
)
_INSTANCE_BY_LIVE_ID = (
    "SELECT i.seq, i.id, i.tenant_id, i.definition_id, i.definition_pk, i.status"
    " FROM tokens t JOIN instances i ON i.seq = t.instance_seq WHERE t.id = :token AND t.tenant_id = :tenant"
)
SQL_INSTANCE_OF_TOKEN = Sql(_INSTANCE_BY_LIVE_ID)
SQL_INSTANCE_OF_TOKEN_LOCKED = Sql(_INSTANCE_BY_LIVE_ID + " FOR UPDATE OF i")
# Threshold joins' markers are engine state, not tokens a reader is shown.
SQL_INSTANCE_WITH_TOKENS = Sql(
    "SELECT i.seq, i.id, i.tenant_id, i.definition_id, i.definition_pk, i.status, d.version,"
    " i.created_at, i.updated_at, t.id, t.node_id, t.status, t.incident_kind, t.message, t.since,"
    " t.due_at, i.ended_at"
    " FROM instances i JOIN definitions d ON d.pk = i.definition_pk"
    " LEFT JOIN tokens t ON t.instance_seq = i.seq AND t.status <> 'absorbing'"
    " WHERE i.id = :id AND i.tenant_id = :tenant ORDER BY t.ordinal"
)
SQL_LIVE_TOKENS = Sql(
    "SELECT id, node_id, status, ordinal, arrived_by, due_at, message, incident_kind, retry, since"
    " FROM tokens WHERE instance_seq = :seq ORDER BY ordinal"
)
SQL_INSERT_TOKEN = Sql(
    "INSERT INTO tokens (id, instance_seq, tenant_id, node_id, status, ordinal, arrived_by, due_at, message,"
    " incident_kind, retry, since)"
    " VALUES (:id, :seq, :tenant, :node_id, :status, :ordinal, :arrived_by, :due_at, :message,"
    " :incident_kind, :retry, :since)"
)
SQL_SET_STATUS = Sql(
    "UPDATE instances SET status = :status, updated_at = :now, ended_at = :ended_at WHERE seq = :seq"
)
SQL_TOUCH = Sql("UPDATE instances SET updated_at = :now WHERE seq = :seq")
SQL_VARIABLES = Sql("SELECT name, value FROM variables WHERE instance_seq = :seq ORDER BY name")
SQL_INSERT_VARIABLE = Sql(
    "INSERT INTO variables (instance_seq, tenant_id, name, value, value_digest)"
    " VALUES (:seq, :tenant, :name, :value, :digest)"
)
SQL_UPDATE_VARIABLE = Sql(
    "UPDATE variables SET value = :value, value_digest = :digest WHERE instance_seq = :seq AND name = :name"
)
# Names are ASCII, so their length is their size; values are measured in UTF-8 bytes, for which
# each database has its own spelling (SQLite before 3.43 has no octet_length).
_OTHER_VARIABLES_SIZE = (
    "SELECT COUNT(*), COALESCE(SUM(LENGTH(name) + {value_bytes}), 0) FROM variables"
    " WHERE instance_seq = :seq AND name <> :name"
)
SQL_OTHER_VARIABLES_SIZE_SQLITE = Sql(_OTHER_VARIABLES_SIZE.format(value_bytes="LENGTH(CAST(value AS BLOB))"))
SQL_OTHER_VARIABLES_SIZE_POSTGRES = Sql(_OTHER_VARIABLES_SIZE.format(value_bytes="OCTET_LENGTH(value)"))
_VARIABLE_SIZES = "SELECT name, LENGTH(name) + {value_bytes} FROM variables WHERE instance_seq = :seq"
SQL_VARIABLE_SIZES_SQLITE = Sql(_VARIABLE_SIZES.format(value_bytes="LENGTH(CAST(value AS BLOB))"))
SQL_VARIABLE_SIZES_POSTGRES = Sql(_VARIABLE_SIZES.format(value_bytes="OCTET_LENGTH(value)"))
SQL_FIND_IDEMPOTENCY_KEY = Sql(
    "SELECT request_hash, instance_id FROM idempotency_keys"
    " WHERE tenant_id = :tenant AND key = :key AND created_at >= :not_before"
)
# Only an expired row: a live one a racing start has just committed stays, and this start's
# insert then fails on the key (the caller answers the racer's instance).
SQL_FORGET_IDEMPOTENCY_KEY = Sql(
    "DELETE FROM idempotency_keys WHERE tenant_id = :tenant AND key = :key AND created_at < :not_before"
)
SQL_STORE_IDEMPOTENCY_KEY = Sql(
    "INSERT INTO idempotency_keys (tenant_id, key, request_hash, instance_id, created_at)"
    " VALUES (:tenant, :key, :request_hash, :instance_id, :now)"
)
# A scheduler's claim: one statement (one round trip) that picks the oldest due tokens no other
# scheduler holds and leases them. On PostgreSQL the picked ids go in as an array, which makes
# the update look them up by key: as `IN (subquery)` the planner joined them by scanning the
# whole table.
_DUE_UNCLAIMED = (
    "SELECT id FROM tokens WHERE due_at <= :now AND status = 'parked'"
    " AND (claimed_until IS NULL OR claimed_until < :now) ORDER BY due_at LIMIT :limit"
)
_CLAIM_DUE = "UPDATE tokens SET claimed_until = :lease_until WHERE {picked} RETURNING id, tenant_id, due_at"
SQL_CLAIM_DUE_SQLITE = Sql(_CLAIM_DUE.format(picked=f"id IN ({_DUE_UNCLAIMED})"))
SQL_CLAIM_DUE_POSTGRES = Sql(
    _CLAIM_DUE.format(picked=f"id = ANY(ARRAY({_DUE_UNCLAIMED} FOR UPDATE SKIP LOCKED))")
)
SQL_AUDIT = Sql(
    "INSERT INTO audit (at, tenant_id, actor, action, instance_id, detail)"
    " VALUES (:at, :tenant, :actor, :action, :instance_id, :detail)"
)


# Statements over a batch of rows name them in an IN list. The list is padded to a power of two
# by repeating its last value (which IN ignores), so a handful of statement texts serves every
# batch size and the driver's statement caches stay small.
_INSTANCES_OF_TOKENS = (
    "SELECT t.id, i.seq, i.id, i.tenant_id, i.definition_id, i.definition_pk, i.status"
    " FROM tokens t JOIN instances i ON i.seq = t.instance_seq WHERE t.id IN ({values})"
)
_BATCH_STATEMENTS = {
    "instances_of_tokens": _INSTANCES_OF_TOKENS,
    # One lock order for every batch (the instances' own order), so two schedulers' batches
    # that share instances wait for each other instead of deadlocking.
    "instances_of_tokens_locked": _INSTANCES_OF_TOKENS + " ORDER BY i.seq FOR UPDATE OF i",
    "live_tokens_of": (
        "SELECT instance_seq, id, node_id, status, ordinal, arrived_by, due_at, message, incident_kind,"
        " retry, since FROM tokens WHERE instance_seq IN ({values}) ORDER BY instance_seq, ordinal"
    ),
    "delete_tokens_by_id": "DELETE FROM tokens WHERE id IN ({values})",
    "set_status_of": (
        "UPDATE instances SET status = :status, updated_at = :now, ended_at = :ended_at"
        " WHERE seq IN ({values})"
    ),
    "touch_instances": "UPDATE instances SET updated_at = :now WHERE seq IN ({values})",
}


@lru_cache(maxsize=128)
def _batch_sql(name: str, size: int) -> Sql:
    # Only generated parameter names are joined in; the values themselves are bound.
    values = ", ".join(f":v{i}" for i in range(size))
    return Sql(_BATCH_STATEMENTS[name].format(values=values))


def _run_batch(
    conn: Session, name: str, values: Sequence[Any], parameters: Mapping[str, Any] | None = None
) -> Any:
    """Runs a batch statement over `values` (at least one); returns the driver's cursor."""
    size = 1 << (len(values) - 1).bit_length()
    bound = dict(parameters or {})
    for i, value in enumerate(values):
        bound[f"v{i}"] = value
    for i in range(len(values), size):
        bound[f"v{i}"] = values[-1]
    return execute(conn, _batch_sql(name, size), bound)


@lru_cache(maxsize=64)
def _delete_tokens_sql(count: int) -> Sql:
    # Only generated parameter names are joined in; the ids themselves are bound.
    ids = ", ".join(f":id{i}" for i in range(count))
    return Sql(f"DELETE FROM tokens WHERE instance_seq = :seq AND id IN ({ids})")  # noqa: S608


def _list_statement(by_definition: bool, by_status: bool, after: bool) -> Sql:
    conditions = ["tenant_id = :tenant"]
    if by_definition:
        conditions.append("definition_id = :definition_id")
    if by_status:
        conditions.append("status = :status")
    if after:
        conditions.append("seq < :before")
    where = " AND ".join(conditions)
    # Only the fixed conditions above are joined in; every value is a bound parameter.
    return Sql(
        f"SELECT seq, id, definition_id, status FROM instances WHERE {where} ORDER BY seq DESC LIMIT :limit"  # noqa: S608
    )


# One statement per filter combination, each served by one of the instance indexes.
SQL_LIST = {
    (d, st, a): _list_statement(d, st, a)
    for d in (False, True)
    for st in (False, True)
    for a in (False, True)
}


# --- the operations API's reads ---------------------------------------------------------------

SQL_DELETE_INSTANCE_TOKENS = Sql("DELETE FROM tokens WHERE instance_seq = :seq")
SQL_VISIBLE_DEFINITIONS = Sql(
    "SELECT pk, tenant_key, definition_id, version, deployed_at FROM definitions"
    " WHERE tenant_key IN (:tenant, '') ORDER BY definition_id, tenant_key, version"
)
SQL_RUNNING_BY_DEFINITION_PK = Sql(
    "SELECT definition_pk, COUNT(*) FROM instances WHERE tenant_id = :tenant AND status = 'running'"
    " GROUP BY definition_pk"
)
SQL_INCIDENTS_BY_DEFINITION = Sql(
    "SELECT i.definition_id, COUNT(*) FROM tokens t JOIN instances i ON i.seq = t.instance_seq"
    " WHERE t.tenant_id = :tenant AND t.status = 'incident' GROUP BY i.definition_id"
)
SQL_TOKENS_BY_NODE = Sql(
    "SELECT t.node_id, t.status, COUNT(*) FROM tokens t JOIN instances i ON i.seq = t.instance_seq"
    " WHERE t.tenant_id = :tenant AND i.definition_pk = :pk AND t.status <> 'absorbing'"
    " GROUP BY t.node_id, t.status"
)
_HISTORY = (
    "SELECT seq, at, actor, action, detail FROM audit WHERE tenant_id = :tenant AND instance_id = :id{after}"
    " ORDER BY seq LIMIT :limit"
)
SQL_HISTORY = Sql(_HISTORY.format(after=""))
SQL_HISTORY_AFTER = Sql(_HISTORY.format(after=" AND seq > :after"))


@lru_cache(maxsize=128)
def _incidents_sql(by_definition: bool, by_node: bool, after: bool) -> Sql:
    conditions = ["t.tenant_id = :tenant", "t.status = 'incident'"]
    if by_node:
        conditions.append("t.node_id = :node_id")
    if by_definition:
        conditions.append("i.definition_id = :definition_id")
    if after:
        conditions.append("(t.since, t.id) > (:since, :token)")
    where = " AND ".join(conditions)
    # Only the fixed conditions above are joined in; every value is a bound parameter.
    return Sql(
        "SELECT t.id, t.node_id, t.incident_kind, t.message, t.since, i.id, i.definition_id, d.version"  # noqa: S608
        " FROM tokens t JOIN instances i ON i.seq = t.instance_seq"
        " JOIN definitions d ON d.pk = i.definition_pk"
        f" WHERE {where} ORDER BY t.since, t.id LIMIT :limit"
    )


@dataclass(frozen=True, slots=True)
class InstanceQuery:
    """SearchInstances' filters as storage applies them; None (or empty) filters nothing."""

    definition_id: str | None = None
    version: int | None = None
    status: str | None = None
    has_incident: bool | None = None
    node_id: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    # (name, value_digest) pairs, all of which must hold.
    variables: tuple[tuple[str, str], ...] = ()


@lru_cache(maxsize=256)
def _search_sql(
    by_definition: bool,
    by_version: bool,
    by_status: bool,
    has_incident: bool | None,
    by_node: bool,
    after: bool,
    before: bool,
    variables: int,
    position: bool,
    only: bool,
) -> Sql:
    conditions = ["i.tenant_id = :tenant"]
    if by_definition:
        conditions.append("i.definition_id = :definition_id")
    if by_version:
        conditions.append(
            "i.definition_pk IN (SELECT pk FROM definitions WHERE definition_id = :definition_id"
            " AND version = :version AND tenant_key IN (:tenant, ''))"
        )
    if by_status:
        conditions.append("i.status = :status")
    if has_incident is False:
        conditions.append(
            "NOT EXISTS (SELECT 1 FROM tokens x WHERE x.instance_seq = i.seq AND x.status = 'incident')"
        )
    if by_node:
        conditions.append(
            "i.seq IN (SELECT instance_seq FROM tokens WHERE tenant_id = :tenant AND node_id = :node_id"
            " AND status IN ('parked', 'waiting', 'incident'))"
        )
    if after:
        conditions.append("i.created_at >= :started_after")
    if before:
        conditions.append("i.created_at < :started_before")
    # Each further value is one primary-key probe of the instance's variables.
    first_probe = 1 if variables and has_incident is not True else 0
    for n in range(first_probe, variables):
        conditions.append(
            f"EXISTS (SELECT 1 FROM variables v{n} WHERE v{n}.instance_seq = i.seq"  # noqa: S608
            f" AND v{n}.name = :name{n} AND v{n}.value_digest = :digest{n})"
        )
    if only:
        conditions.append("i.seq = :only")
    columns = (
        "i.seq, i.id, i.definition_id, d.version, i.status, i.created_at, i.updated_at, i.ended_at,"
        " (SELECT COUNT(*) FROM tokens c WHERE c.instance_seq = i.seq AND c.status = 'incident')"
    )
    if has_incident is True:
        # Driven by the tenant's incident tokens, newest instance first, so a page costs its own
        # rows however many incidents or instances the tenant has; an instance with several
        # incidents is met once, at its first incident token.
        driving = [
            "t.tenant_id = :tenant",
            "t.status = 'incident'",
            "NOT EXISTS (SELECT 1 FROM tokens y WHERE y.instance_seq = t.instance_seq"
            " AND y.status = 'incident' AND y.id < t.id)",
            "i.seq = t.instance_seq",
        ]
        return _driven_search(columns, "tokens t", "t.instance_seq", driving + conditions, position)
    if first_probe:
        # Driven by the tenant's matches of the first value, newest instance first (the index
        # on tenant, name, digest and instance), so a page reads its own rows however many
        # instances the tenant or other tenants have.
        driving = [
            "v0.tenant_id = :tenant",
            "v0.name = :name0",
            "v0.value_digest = :digest0",
            "i.seq = v0.instance_seq",
        ]
        return _driven_search(columns, "variables v0", "v0.instance_seq", driving + conditions, position)
    if position:
        conditions.append("i.seq < :before_seq")
    where = " AND ".join(conditions)
    # Only the fixed conditions above are joined in; every value is a bound parameter.
    return Sql(
        f"SELECT {columns}"  # noqa: S608
        f" FROM instances i JOIN definitions d ON d.pk = i.definition_pk WHERE {where}"
        " ORDER BY i.seq DESC LIMIT :limit"
    )


def _driven_search(columns: str, source: str, seq: str, conditions: list[str], position: bool) -> Sql:
    """A search walking `source` (aliased) newest instance first by its column `seq`, joined to
    the instance and its definition; CROSS JOIN keeps SQLite on that order, so the LIMIT ends
    the walk after one page."""
    if position:
        conditions = [*conditions, f"{seq} < :before_seq"]
    where = " AND ".join(conditions)
    return Sql(
        f"SELECT {columns} FROM {source} CROSS JOIN instances i"  # noqa: S608 (fixed names only)
        f" JOIN definitions d ON d.pk = i.definition_pk WHERE {where}"
        f" ORDER BY {seq} DESC LIMIT :limit"
    )


class InstanceOverview(NamedTuple):
    seq: int
    id: str
    definition_id: str
    definition_version: int
    status: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    open_incidents: int


class IncidentRow(NamedTuple):
    token_id: str
    node_id: str
    kind: str
    reason: str
    since: datetime
    instance_id: str
    definition_id: str
    definition_version: int


class AuditEntry(NamedTuple):
    seq: int
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VisibleDefinition:
    pk: int
    tenant_key: str
    definition_id: str
    version: int
    deployed_at: datetime


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    pk: int
    tenant_key: str
    definition_id: str
    version: int
    content: str
    content_hash: str
    source: str | None
    deployed_at: datetime


@dataclass(frozen=True, slots=True)
class TokenState:
    """A live token as a reader sees it."""

    id: str
    node_id: str
    status: str
    incident_kind: str | None
    incident_reason: str | None
    since: datetime | None
    due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceState:
    """An instance as a reader sees it: its header, definition version, times and live tokens."""

    header: InstanceHeader
    definition_version: int
    started_at: datetime
    updated_at: datetime
    tokens: list[TokenState]
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    seq: int
    id: str
    tenant_id: str
    definition_id: str
    definition_pk: int
    status: InstanceStatus


# --- definitions ---------------------------------------------------------------------------


def latest_definition_version(
    conn: Connection, tenant_key: str, definition_id: str
) -> StoredDefinition | None:
    row = conn.execute(
        select(definitions_t)
        .where(definitions_t.c.tenant_key == tenant_key, definitions_t.c.definition_id == definition_id)
        .order_by(definitions_t.c.version.desc())
        .limit(1)
    ).first()
    return StoredDefinition(**row._mapping) if row else None


def insert_definition_version(
    conn: Connection,
    *,
    tenant_key: str,
    definition_id: str,
    version: int,
    content: str,
    content_hash: str,
    source: str | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(definitions_t).values(
            tenant_key=tenant_key,
            definition_id=definition_id,
            version=version,
            content=content,
            content_hash=content_hash,
            source=source,
            deployed_at=now,
        )
    )


def definition_for_tenant(conn: Session, tenant_id: str, definition_id: str) -> tuple[int, str] | None:
    """The newest version available to the tenant: its own scoped definition wins over a shared one."""
    parameters = {"definition_id": definition_id, "tenant": tenant_id}
    row = execute(conn, SQL_DEFINITION_FOR_TENANT, parameters).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def definition_content(conn: Session, pk: int) -> str:
    return str(_one(execute(conn, SQL_DEFINITION_CONTENT, {"pk": pk}))[0])


def list_definitions(conn: Connection, tenant_key: str | None) -> list[StoredDefinition]:
    """The newest version of each definition, shared and scoped (or only one tenant key's)."""
    newest = (
        select(
            definitions_t.c.tenant_key,
            definitions_t.c.definition_id,
            func.max(definitions_t.c.version).label("version"),
        )
        .group_by(definitions_t.c.tenant_key, definitions_t.c.definition_id)
        .subquery()
    )
    query = select(definitions_t).join(
        newest,
        and_(
            definitions_t.c.tenant_key == newest.c.tenant_key,
            definitions_t.c.definition_id == newest.c.definition_id,
            definitions_t.c.version == newest.c.version,
        ),
    )
    if tenant_key is not None:
        query = query.where(definitions_t.c.tenant_key == tenant_key)
    rows = conn.execute(query.order_by(definitions_t.c.tenant_key, definitions_t.c.definition_id))
    return [StoredDefinition(**row._mapping) for row in rows]


# --- instances and tokens ------------------------------------------------------------------


def insert_instance(
    conn: Session,
    *,
    instance_id: str,
    tenant_id: str,
    definition_id: str,
    definition_pk: int,
    status: InstanceStatus,
    now: datetime,
) -> int:
    row = _one(
        execute(
            conn,
            SQL_INSERT_INSTANCE,
            {
                "id": instance_id,
                "tenant": tenant_id,
                "definition_id": definition_id,
                "definition_pk": definition_pk,
                "status": status.value,
                "now": bind_time(conn, now),
            },
        )
    )
    return int(row[0])


def _header(row: Sequence[Any]) -> InstanceHeader:
    return InstanceHeader(
        seq=row[0],
        id=row[1],
        tenant_id=row[2],
        definition_id=row[3],
        definition_pk=row[4],
        status=InstanceStatus(row[5]),
    )


def _one(cursor: Any) -> Sequence[Any]:
    """The single row a statement must return."""
    rows = cursor.fetchall()
    if len(rows) != 1:
        raise sa_exc.NoResultFound("no row") if not rows else sa_exc.MultipleResultsFound("several rows")
    return cast(Sequence[Any], rows[0])


def find_instance(
    conn: Session, tenant_id: str, instance_id: str, *, lock: bool = False
) -> InstanceHeader | None:
    statement = SQL_FIND_INSTANCE_LOCKED if lock and _locks_rows(conn) else SQL_FIND_INSTANCE
    row = execute(conn, statement, {"id": instance_id, "tenant": tenant_id}).fetchone()
    return _header(row) if row else None


def _locks_rows(conn: Session) -> bool:
    # SQLite has no row locks: its write transactions (BEGIN IMMEDIATE) hold the whole database.
    return not is_sqlite(conn)


def lock_instance_of_token(conn: Session, tenant_id: str, token_id: str) -> InstanceHeader | None:
    """The tenant's instance holding a live token, locked for the rest of the transaction.

    The token itself may be gone by the time the lock is granted; callers read the live
    tokens again under the lock.
    """
    statement = SQL_INSTANCE_OF_TOKEN_LOCKED if _locks_rows(conn) else SQL_INSTANCE_OF_TOKEN
    row = execute(conn, statement, {"token": token_id, "tenant": tenant_id}).fetchone()
    return _header(row) if row else None


def lock_instances_of_tokens(conn: Session, token_ids: Sequence[str]) -> dict[str, InstanceHeader]:
    """The instances holding these live tokens, by token id, locked for the rest of the transaction.

    Any tenant's: the caller checks each token's tenant against its own record of it. As with
    `lock_instance_of_token`, a token may be gone once the lock is granted.
    """
    if not token_ids:
        return {}
    name = "instances_of_tokens_locked" if _locks_rows(conn) else "instances_of_tokens"
    return {row[0]: _header(row[1:]) for row in _run_batch(conn, name, token_ids).fetchall()}


def instance_with_tokens(conn: Session, tenant_id: str, instance_id: str) -> InstanceState | None:
    """The tenant's instance, its definition version, times and live tokens (oldest first): one query."""
    rows = execute(conn, SQL_INSTANCE_WITH_TOKENS, {"id": instance_id, "tenant": tenant_id}).fetchall()
    if not rows:
        return None
    first = rows[0]
    started_at = read_time(first[7])
    updated_at = read_time(first[8])
    assert started_at is not None
    assert updated_at is not None
    tokens = [
        TokenState(r[9], r[10], r[11], r[12], r[13], read_time(r[14]), read_time(r[15]))
        for r in rows
        if r[9] is not None
    ]
    return InstanceState(_header(first), int(first[6]), started_at, updated_at, tokens, read_time(first[16]))


def live_tokens(conn: Session, instance_seq: int) -> list[Token]:
    return [_token(row) for row in execute(conn, SQL_LIVE_TOKENS, {"seq": instance_seq}).fetchall()]


def live_tokens_of(conn: Session, instance_seqs: Sequence[int]) -> dict[int, list[Token]]:
    """The live tokens of several instances, each instance's in `live_tokens` order."""
    found: dict[int, list[Token]] = {seq: [] for seq in instance_seqs}
    if instance_seqs:
        for row in _run_batch(conn, "live_tokens_of", instance_seqs).fetchall():
            found[row[0]].append(_token(row[1:]))
    return found


def _token(row: Sequence[Any]) -> Token:
    return Token(
        id=row[0],
        node_id=row[1],
        status=TokenStatus(row[2]),
        ordinal=row[3],
        arrived_by=row[4],
        due_at=read_time(row[5]),
        reason=row[6],
        incident=IncidentKind(row[7]) if row[7] is not None else None,
        retry=Retry(row[8]) if row[8] is not None else None,
        since=read_time(row[9]),
    )


def insert_tokens(conn: Session, instance_seq: int, tenant_id: str, tokens: Sequence[Token]) -> None:
    insert_tokens_of(conn, [(instance_seq, tenant_id, t) for t in tokens])


def insert_tokens_of(conn: Session, tokens: Sequence[tuple[int, str, Token]]) -> None:
    """Inserts live tokens of one or several instances, each given as (instance seq, tenant, token)."""
    if not tokens:
        return
    execute_many(
        conn,
        SQL_INSERT_TOKEN,
        [
            {
                "id": t.id,
                "seq": instance_seq,
                "tenant": tenant_id,
                "node_id": t.node_id,
                "status": t.status.value,
                "ordinal": t.ordinal,
                "arrived_by": t.arrived_by,
                "due_at": bind_time(conn, t.due_at),
                "message": t.reason[:1000] if t.reason else None,
                "incident_kind": t.incident.value if t.incident is not None else None,
                "retry": t.retry.value if t.retry is not None else None,
                "since": bind_time(conn, t.since),
            }
            for instance_seq, tenant_id, t in tokens
        ],
    )


def delete_tokens_by_id(conn: Session, token_ids: Sequence[str]) -> int:
    """Deletes live tokens of any instances by id; returns how many were deleted."""
    if not token_ids:
        return 0
    cursor = _run_batch(conn, "delete_tokens_by_id", token_ids)
    count = int(cursor.rowcount)
    cursor.close()
    return count


def delete_tokens(conn: Session, instance_seq: int, token_ids: Sequence[str]) -> int:
    if not token_ids:
        return 0
    parameters: dict[str, Any] = {f"id{i}": token_id for i, token_id in enumerate(token_ids)}
    parameters["seq"] = instance_seq
    cursor = execute(conn, _delete_tokens_sql(len(token_ids)), parameters)
    count = int(cursor.rowcount)
    cursor.close()
    return count


def set_instance_status(conn: Session, seq: int, status: InstanceStatus, now: datetime) -> None:
    """Sets the status; an instance that leaves `running` ends at `now`."""
    at = bind_time(conn, now)
    ended_at = None if status is InstanceStatus.RUNNING else at
    execute(
        conn, SQL_SET_STATUS, {"status": status.value, "now": at, "ended_at": ended_at, "seq": seq}
    ).close()


def set_status_of(conn: Session, seqs: Sequence[int], status: InstanceStatus, now: datetime) -> None:
    """`set_instance_status` for several instances at once."""
    if not seqs:
        return
    at = bind_time(conn, now)
    ended_at = None if status is InstanceStatus.RUNNING else at
    _run_batch(conn, "set_status_of", seqs, {"status": status.value, "now": at, "ended_at": ended_at}).close()


def touch_instances(conn: Session, seqs: Sequence[int], now: datetime) -> None:
    """`touch_instance` for several instances at once."""
    if seqs:
        _run_batch(conn, "touch_instances", seqs, {"now": bind_time(conn, now)}).close()


def delete_instance_tokens(conn: Session, instance_seq: int) -> None:
    """Removes every live token of an instance, threshold-join markers included."""
    execute(conn, SQL_DELETE_INSTANCE_TOKENS, {"seq": instance_seq}).close()


def touch_instance(conn: Session, seq: int, now: datetime) -> None:
    """Records that the instance changed at `now` (its `updated_at`)."""
    execute(conn, SQL_TOUCH, {"now": bind_time(conn, now), "seq": seq}).close()


def list_instances(
    conn: Session,
    tenant_id: str,
    *,
    definition_id: str | None,
    status: str | None,
    before_seq: int | None,
    limit: int,
) -> list[tuple[int, str, str, str]]:
    """(seq, id, definition_id, status), newest first; one index range scan per page."""
    statement = SQL_LIST[(definition_id is not None, status is not None, before_seq is not None)]
    parameters: dict[str, Any] = {"tenant": tenant_id, "limit": limit}
    if definition_id is not None:
        parameters["definition_id"] = definition_id
    if status is not None:
        parameters["status"] = status
    if before_seq is not None:
        parameters["before"] = before_seq
    rows = execute(conn, statement, parameters).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def claim_due_tokens(
    conn: Connection, now: datetime, limit: int, lease_until: datetime
) -> list[tuple[str, str]]:
    """Leases up to `limit` parked tokens due by `now`, oldest due first: (token id, tenant).

    Concurrent schedulers claim disjoint batches (on PostgreSQL a claim skips the rows another
    claim has locked; SQLite runs one writer at a time); a lease that runs out (its scheduler
    died) lets another scheduler take the token.
    """
    statement = SQL_CLAIM_DUE_SQLITE if is_sqlite(conn) else SQL_CLAIM_DUE_POSTGRES
    parameters = {"now": bind_time(conn, now), "limit": limit, "lease_until": bind_time(conn, lease_until)}
    rows = execute(conn, statement, parameters).fetchall()
    rows.sort(key=lambda r: (read_time(r[2]), r[0]))
    return [(row[0], row[1]) for row in rows]


def due_backlog(conn: Connection, now: datetime) -> int:
    """Parked tokens already due: what the schedulers have yet to fire."""
    count = conn.execute(
        select(func.count())
        .select_from(tokens_t)
        .where(tokens_t.c.due_at <= now, tokens_t.c.status == TokenStatus.PARKED.value)
    ).scalar_one()
    return int(count)


# --- variables -----------------------------------------------------------------------------


class StoredVariables(Mapping[str, Json]):
    """An instance's variables, read on first use: most advances evaluate no condition at all."""

    def __init__(self, conn: Session, instance_seq: int) -> None:
        self._conn = conn
        self._seq = instance_seq
        self._values: dict[str, Json] | None = None

    def _load(self) -> dict[str, Json]:
        if self._values is None:
            self._values = variables_of(self._conn, self._seq)
        return self._values

    def __getitem__(self, name: str) -> Json:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def variables_of(conn: Session, instance_seq: int) -> dict[str, Json]:
    rows = execute(conn, SQL_VARIABLES, {"seq": instance_seq}).fetchall()
    return {name: json.loads(value) for name, value in rows}


def value_digest(text: str) -> str:
    """SHA-256 (hex) of a stored value's comparison form, which a search by value looks up.

    Two values compare equal when they are the same JSON value: numbers by their value (`1`
    and `1.0` match; a JSON number cannot tell them apart), objects whatever their key order,
    arrays in order, `true` never equal to `1`.
    """
    comparable = json.dumps(
        _comparison_form(json.loads(text)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(comparable.encode()).hexdigest()


def _comparison_form(value: Json) -> Json:
    if isinstance(value, float) and value.is_integer():
        # Integral values stored are within +/-2^53 (the published limit), so int() is exact.
        return int(value)
    if isinstance(value, list):
        return [_comparison_form(item) for item in value]
    if isinstance(value, dict):
        return {key: _comparison_form(item) for key, item in value.items()}
    return value


class StoredValue(NamedTuple):
    """A variable's value as stored: its JSON text and the digest a search by value looks up.

    Made before a write transaction begins (`stored_values`), so the writer's turn holds only
    the statements."""

    text: str
    digest: str


def stored_value(text: str) -> StoredValue:
    return StoredValue(text, value_digest(text))


def stored_values(encoded: Mapping[str, str]) -> dict[str, StoredValue]:
    """Encoded values (name -> JSON text) as stored."""
    return {name: stored_value(text) for name, text in encoded.items()}


def insert_variables(
    conn: Session, tenant_id: str, instance_seq: int, values: Mapping[str, StoredValue]
) -> None:
    if values:
        rows = [
            {"seq": instance_seq, "tenant": tenant_id, "name": k, "value": v.text, "digest": v.digest}
            for k, v in values.items()
        ]
        execute_many(conn, SQL_INSERT_VARIABLE, rows)


def variable_sizes(conn: Session, instance_seq: int) -> dict[str, int]:
    """Each variable's name and value together in bytes, by name."""
    statement = SQL_VARIABLE_SIZES_SQLITE if is_sqlite(conn) else SQL_VARIABLE_SIZES_POSTGRES
    return {str(name): int(size) for name, size in execute(conn, statement, {"seq": instance_seq}).fetchall()}


def other_variables_size(conn: Session, instance_seq: int, name: str) -> tuple[int, int]:
    """How many variables an instance holds besides `name`, and their names and values in bytes together."""
    statement = SQL_OTHER_VARIABLES_SIZE_SQLITE if is_sqlite(conn) else SQL_OTHER_VARIABLES_SIZE_POSTGRES
    count, size = _one(execute(conn, statement, {"seq": instance_seq, "name": name}))
    return int(count), int(size)


def upsert_variable(conn: Session, tenant_id: str, instance_seq: int, name: str, value: StoredValue) -> None:
    parameters = {"seq": instance_seq, "name": name, "value": value.text, "digest": value.digest}
    cursor = execute(conn, SQL_UPDATE_VARIABLE, parameters)
    updated = cursor.rowcount
    cursor.close()
    if updated == 0:
        execute(conn, SQL_INSERT_VARIABLE, parameters | {"tenant": tenant_id}).close()


# --- audit and idempotency -----------------------------------------------------------------


def record_audit(
    conn: Session,
    *,
    at: datetime,
    tenant_id: str,
    actor: str,
    action: str,
    instance_id: str | None,
    detail: dict[str, Json] | str,
) -> None:
    """Writes one audit row; `detail` as a dict, or as its JSON text made before the transaction."""
    execute(
        conn,
        SQL_AUDIT,
        {
            "at": bind_time(conn, at),
            "tenant": tenant_id,
            "actor": actor,
            "action": action,
            "instance_id": instance_id,
            "detail": detail if isinstance(detail, str) else dump_json(detail),
        },
    ).close()


class AuditRecord(NamedTuple):
    """One audit row to write (see `record_audits`)."""

    tenant_id: str
    actor: str
    action: str
    instance_id: str | None
    detail: dict[str, Json]


def record_audits(conn: Connection, at: datetime, records: Sequence[AuditRecord]) -> None:
    """Writes several audit rows of one moment in one statement."""
    if not records:
        return
    when = bind_time(conn, at)
    execute_many(
        conn,
        SQL_AUDIT,
        [
            {
                "at": when,
                "tenant": r.tenant_id,
                "actor": r.actor,
                "action": r.action,
                "instance_id": r.instance_id,
                "detail": dump_json(r.detail),
            }
            for r in records
        ],
    )


def read_audit(conn: Connection, tenant_id: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(audit_t)
    if tenant_id is not None:
        query = query.where(audit_t.c.tenant_id == tenant_id)
    rows = conn.execute(query.order_by(audit_t.c.seq.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]


def find_idempotency_key(
    conn: Session, tenant_id: str, key: str, not_before: datetime
) -> tuple[str, str] | None:
    parameters = {"tenant": tenant_id, "key": key, "not_before": bind_time(conn, not_before)}
    row = execute(conn, SQL_FIND_IDEMPOTENCY_KEY, parameters).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def store_idempotency_key(
    conn: Session,
    *,
    tenant_id: str,
    key: str,
    request_hash: str,
    instance_id: str,
    now: datetime,
    not_before: datetime,
) -> None:
    """Keeps a start's key; a row of the key created before `not_before` (expired) is replaced.

    A live row of the key (a racing start's, committed or not) makes the insert fail with an
    integrity error: on PostgreSQL once the racer commits, on SQLite never, as the writers'
    turn lets the later start find the key first.
    """
    forget = {"tenant": tenant_id, "key": key, "not_before": bind_time(conn, not_before)}
    execute(conn, SQL_FORGET_IDEMPOTENCY_KEY, forget).close()
    parameters = {
        "tenant": tenant_id,
        "key": key,
        "request_hash": request_hash,
        "instance_id": instance_id,
        "now": bind_time(conn, now),
    }
    execute(conn, SQL_STORE_IDEMPOTENCY_KEY, parameters).close()


def forget_idempotency_keys(conn: Connection, older_than: datetime) -> int:
    return conn.execute(delete(idempotency_t).where(idempotency_t.c.created_at < older_than)).rowcount


def count_parked_tokens(conn: Connection) -> int:
    """Tokens parked on a wait or timer node."""
    count = conn.execute(
        select(func.count()).select_from(tokens_t).where(tokens_t.c.status == TokenStatus.PARKED.value)
    ).scalar_one()
    return int(count)


def count_instances_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(instances_t.c.status, func.count()).group_by(instances_t.c.status))
    return {row[0]: int(row[1]) for row in rows}


# --- the operations API --------------------------------------------------------------------


def search_instances(
    conn: Session,
    tenant_id: str,
    query: InstanceQuery,
    *,
    before_seq: int | None,
    limit: int,
    only_seq: int | None = None,
) -> list[InstanceOverview]:
    """The tenant's instances matching every filter, newest first."""
    statement = _search_sql(
        query.definition_id is not None,
        query.version is not None,
        query.status is not None,
        query.has_incident,
        query.node_id is not None,
        query.started_after is not None,
        query.started_before is not None,
        len(query.variables),
        before_seq is not None,
        only_seq is not None,
    )
    parameters: dict[str, Any] = {
        "tenant": tenant_id,
        "limit": limit,
        "definition_id": query.definition_id,
        "version": query.version,
        "status": query.status,
        "node_id": query.node_id,
        "started_after": bind_time(conn, query.started_after),
        "started_before": bind_time(conn, query.started_before),
        "before_seq": before_seq,
        "only": only_seq,
    }
    for n, (name, digest) in enumerate(query.variables):
        parameters[f"name{n}"] = name
        parameters[f"digest{n}"] = digest
    rows = execute(conn, statement, _used(statement, parameters)).fetchall()
    # Positional, in the statement's column order: a page builds up to 1,000 of these, and
    # keyword arguments cost a named tuple twice the time (both drivers give ints for the
    # integer columns and counts).
    return [
        InstanceOverview(r[0], r[1], r[2], r[3], r[4], _time(r[5]), _time(r[6]), read_time(r[7]), r[8])
        for r in rows
    ]


def _used(statement: Sql, parameters: dict[str, Any]) -> dict[str, Any]:
    # The drivers want exactly the statement's parameters (psycopg ignores extras, SQLite does not).
    return {name: value for name, value in parameters.items() if f":{name}" in statement.sqlite}


def _time(value: Any) -> datetime:
    at = read_time(value)
    assert at is not None
    return at


def list_incidents(
    conn: Session,
    tenant_id: str,
    *,
    definition_id: str | None,
    node_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[IncidentRow]:
    """The tenant's incident tokens, oldest first (by since, then token id)."""
    statement = _incidents_sql(definition_id is not None, node_id is not None, after is not None)
    parameters: dict[str, Any] = {"tenant": tenant_id, "limit": limit}
    if definition_id is not None:
        parameters["definition_id"] = definition_id
    if node_id is not None:
        parameters["node_id"] = node_id
    if after is not None:
        parameters["since"] = bind_time(conn, after[0])
        parameters["token"] = after[1]
    rows = execute(conn, statement, parameters).fetchall()
    unclassified = IncidentKind.UNCLASSIFIED.value
    # Positional, in the statement's column order (see search_instances).
    return [
        IncidentRow(r[0], r[1], r[2] or unclassified, r[3] or "", _time(r[4]), r[5], r[6], r[7]) for r in rows
    ]


def instance_history(
    conn: Session, tenant_id: str, instance_id: str, *, after_seq: int | None, limit: int
) -> list[AuditEntry]:
    """The instance's audit rows, oldest first."""
    parameters: dict[str, Any] = {"tenant": tenant_id, "id": instance_id, "limit": limit}
    statement = SQL_HISTORY
    if after_seq is not None:
        statement = SQL_HISTORY_AFTER
        parameters["after"] = after_seq
    rows = execute(conn, statement, parameters).fetchall()
    return [AuditEntry(int(r[0]), _time(r[1]), r[2], r[3], json.loads(r[4])) for r in rows]


def visible_definitions(conn: Session, tenant_id: str) -> list[VisibleDefinition]:
    """Every version of every definition the tenant can see, its own and shared ones."""
    rows = execute(conn, SQL_VISIBLE_DEFINITIONS, {"tenant": tenant_id}).fetchall()
    return [VisibleDefinition(int(r[0]), r[1], r[2], int(r[3]), _time(r[4])) for r in rows]


def running_by_definition_pk(conn: Session, tenant_id: str) -> dict[int, int]:
    rows = execute(conn, SQL_RUNNING_BY_DEFINITION_PK, {"tenant": tenant_id}).fetchall()
    return {int(pk): int(count) for pk, count in rows}


def incidents_by_definition(conn: Session, tenant_id: str) -> dict[str, int]:
    rows = execute(conn, SQL_INCIDENTS_BY_DEFINITION, {"tenant": tenant_id}).fetchall()
    return {str(definition_id): int(count) for definition_id, count in rows}


def tokens_by_node(conn: Session, tenant_id: str, definition_pk: int) -> dict[tuple[str, str], int]:
    """The tenant's live tokens in instances of one definition version, by (node, status)."""
    rows = execute(conn, SQL_TOKENS_BY_NODE, {"tenant": tenant_id, "pk": definition_pk}).fetchall()
    return {(str(node), str(status)): int(count) for node, status, count in rows}
