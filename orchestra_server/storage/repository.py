"""Statements over one open transaction: repositories never commit, the caller's transaction does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, delete, func, insert, or_, select, update

from orchestra_server.engine.model import InstanceStatus, Json, Token, TokenStatus
from orchestra_server.storage.schema import (
    SHARED_TENANT_KEY,
    AuditRow,
    DefinitionRow,
    IdempotencyKeyRow,
    InstanceRow,
    TokenRow,
    VariableRow,
)

definitions_t = cast(Table, DefinitionRow.__table__)
instances_t = cast(Table, InstanceRow.__table__)
tokens_t = cast(Table, TokenRow.__table__)
variables_t = cast(Table, VariableRow.__table__)
audit_t = cast(Table, AuditRow.__table__)
idempotency_t = cast(Table, IdempotencyKeyRow.__table__)


def dump_json(value: Json) -> str:
    """Canonical JSON text: compact, keys in their given order, no NaN/Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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


def definition_for_tenant(conn: Connection, tenant_id: str, definition_id: str) -> tuple[int, str] | None:
    """The newest version available to the tenant: its own scoped definition wins over a shared one."""
    row = conn.execute(
        select(definitions_t.c.pk, definitions_t.c.content)
        .where(
            definitions_t.c.definition_id == definition_id,
            definitions_t.c.tenant_key.in_((tenant_id, SHARED_TENANT_KEY)),
        )
        .order_by((definitions_t.c.tenant_key == SHARED_TENANT_KEY).asc(), definitions_t.c.version.desc())
        .limit(1)
    ).first()
    return (row.pk, row.content) if row else None


def definition_content(conn: Connection, pk: int) -> str:
    content = conn.execute(select(definitions_t.c.content).where(definitions_t.c.pk == pk)).scalar_one()
    return str(content)


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
    conn: Connection,
    *,
    instance_id: str,
    tenant_id: str,
    definition_id: str,
    definition_pk: int,
    status: InstanceStatus,
    now: datetime,
) -> int:
    result = conn.execute(
        insert(instances_t)
        .values(
            id=instance_id,
            tenant_id=tenant_id,
            definition_id=definition_id,
            definition_pk=definition_pk,
            status=status.value,
            created_at=now,
            updated_at=now,
        )
        .returning(instances_t.c.seq)
    )
    return int(result.scalar_one())


def _header(row: Any) -> InstanceHeader:
    return InstanceHeader(
        seq=row.seq,
        id=row.id,
        tenant_id=row.tenant_id,
        definition_id=row.definition_id,
        definition_pk=row.definition_pk,
        status=InstanceStatus(row.status),
    )


_HEADER_COLUMNS = (
    instances_t.c.seq,
    instances_t.c.id,
    instances_t.c.tenant_id,
    instances_t.c.definition_id,
    instances_t.c.definition_pk,
    instances_t.c.status,
)


def find_instance(
    conn: Connection, tenant_id: str, instance_id: str, *, lock: bool = False
) -> InstanceHeader | None:
    query = select(*_HEADER_COLUMNS).where(
        instances_t.c.id == instance_id, instances_t.c.tenant_id == tenant_id
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _header(row) if row else None


def lock_instance(conn: Connection, seq: int) -> InstanceHeader:
    row = conn.execute(select(*_HEADER_COLUMNS).where(instances_t.c.seq == seq).with_for_update()).one()
    return _header(row)


def instance_of_token(conn: Connection, tenant_id: str, token_id: str) -> int | None:
    """The instance seq of a live token of the tenant, or None."""
    seq = conn.execute(
        select(tokens_t.c.instance_seq).where(tokens_t.c.id == token_id, tokens_t.c.tenant_id == tenant_id)
    ).scalar_one_or_none()
    return int(seq) if seq is not None else None


def live_tokens(conn: Connection, instance_seq: int) -> list[Token]:
    rows = conn.execute(
        select(tokens_t).where(tokens_t.c.instance_seq == instance_seq).order_by(tokens_t.c.ordinal)
    )
    return [
        Token(
            id=row.id,
            node_id=row.node_id,
            status=TokenStatus(row.status),
            ordinal=row.ordinal,
            arrived_by=row.arrived_by,
            due_at=row.due_at,
            message=row.message,
        )
        for row in rows
    ]


def insert_tokens(conn: Connection, instance_seq: int, tenant_id: str, tokens: Sequence[Token]) -> None:
    if not tokens:
        return
    conn.execute(
        insert(tokens_t),
        [
            {
                "id": t.id,
                "instance_seq": instance_seq,
                "tenant_id": tenant_id,
                "node_id": t.node_id,
                "status": t.status.value,
                "ordinal": t.ordinal,
                "arrived_by": t.arrived_by,
                "due_at": t.due_at,
                "message": t.message[:1000] if t.message else None,
            }
            for t in tokens
        ],
    )


def delete_tokens(conn: Connection, instance_seq: int, token_ids: Sequence[str]) -> int:
    if not token_ids:
        return 0
    result = conn.execute(
        delete(tokens_t).where(tokens_t.c.instance_seq == instance_seq, tokens_t.c.id.in_(token_ids))
    )
    return result.rowcount


def set_instance_status(conn: Connection, seq: int, status: InstanceStatus, now: datetime) -> None:
    conn.execute(
        update(instances_t).where(instances_t.c.seq == seq).values(status=status.value, updated_at=now)
    )


def list_instances(
    conn: Connection,
    tenant_id: str,
    *,
    definition_id: str | None,
    status: str | None,
    before_seq: int | None,
    limit: int,
) -> list[tuple[int, str, str, str]]:
    """(seq, id, definition_id, status), newest first; one index range scan per page."""
    query = select(
        instances_t.c.seq, instances_t.c.id, instances_t.c.definition_id, instances_t.c.status
    ).where(instances_t.c.tenant_id == tenant_id)
    if definition_id is not None:
        query = query.where(instances_t.c.definition_id == definition_id)
    if status is not None:
        query = query.where(instances_t.c.status == status)
    if before_seq is not None:
        query = query.where(instances_t.c.seq < before_seq)
    rows = conn.execute(query.order_by(instances_t.c.seq.desc()).limit(limit))
    return [(row.seq, row.id, row.definition_id, row.status) for row in rows]


def claim_due_tokens(
    conn: Connection, now: datetime, limit: int, lease_until: datetime, *, skip_locked: bool
) -> list[tuple[str, str]]:
    """Leases up to `limit` parked tokens due by `now`, oldest due first: (token id, tenant).

    With `skip_locked` (PostgreSQL) concurrent schedulers claim disjoint batches; a lease
    that runs out (its scheduler died) lets another scheduler take the token.
    """
    candidates = (
        select(tokens_t.c.id)
        .where(
            tokens_t.c.due_at <= now,
            tokens_t.c.status == TokenStatus.PARKED.value,
            or_(tokens_t.c.claimed_until.is_(None), tokens_t.c.claimed_until < now),
        )
        .order_by(tokens_t.c.due_at)
        .limit(limit)
    )
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    ids = [row[0] for row in conn.execute(candidates)]
    if not ids:
        return []
    rows = conn.execute(
        update(tokens_t)
        .where(tokens_t.c.id.in_(ids))
        .values(claimed_until=lease_until)
        .returning(tokens_t.c.id, tokens_t.c.tenant_id, tokens_t.c.due_at)
    ).all()
    rows = sorted(rows, key=lambda r: (r.due_at, r.id))
    return [(row.id, row.tenant_id) for row in rows]


def due_backlog(conn: Connection, now: datetime) -> int:
    """Parked tokens already due: what the schedulers have yet to fire."""
    count = conn.execute(
        select(func.count())
        .select_from(tokens_t)
        .where(tokens_t.c.due_at <= now, tokens_t.c.status == TokenStatus.PARKED.value)
    ).scalar_one()
    return int(count)


def next_due_at(conn: Connection) -> datetime | None:
    value = conn.execute(
        select(func.min(tokens_t.c.due_at)).where(tokens_t.c.status == TokenStatus.PARKED.value)
    ).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


# --- variables -----------------------------------------------------------------------------


def variables_of(conn: Connection, instance_seq: int) -> dict[str, Json]:
    rows = conn.execute(
        select(variables_t.c.name, variables_t.c.value)
        .where(variables_t.c.instance_seq == instance_seq)
        .order_by(variables_t.c.name)
    )
    return {row.name: json.loads(row.value) for row in rows}


def insert_variables(conn: Connection, instance_seq: int, values: dict[str, str]) -> None:
    if values:
        conn.execute(
            insert(variables_t),
            [{"instance_seq": instance_seq, "name": k, "value": v} for k, v in values.items()],
        )


def upsert_variable(conn: Connection, instance_seq: int, name: str, value: str) -> None:
    updated = conn.execute(
        update(variables_t)
        .where(variables_t.c.instance_seq == instance_seq, variables_t.c.name == name)
        .values(value=value)
    )
    if updated.rowcount == 0:
        conn.execute(insert(variables_t).values(instance_seq=instance_seq, name=name, value=value))


# --- audit and idempotency -----------------------------------------------------------------


def record_audit(
    conn: Connection,
    *,
    at: datetime,
    tenant_id: str,
    actor: str,
    action: str,
    instance_id: str | None,
    detail: dict[str, Json],
) -> None:
    conn.execute(
        insert(audit_t).values(
            at=at,
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            instance_id=instance_id,
            detail=dump_json(detail),
        )
    )


def read_audit(conn: Connection, tenant_id: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(audit_t)
    if tenant_id is not None:
        query = query.where(audit_t.c.tenant_id == tenant_id)
    rows = conn.execute(query.order_by(audit_t.c.seq.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]


def find_idempotency_key(
    conn: Connection, tenant_id: str, key: str, not_before: datetime
) -> tuple[str, str] | None:
    row = conn.execute(
        select(idempotency_t.c.request_hash, idempotency_t.c.instance_id).where(
            idempotency_t.c.tenant_id == tenant_id,
            idempotency_t.c.key == key,
            idempotency_t.c.created_at >= not_before,
        )
    ).first()
    return (row.request_hash, row.instance_id) if row else None


def store_idempotency_key(
    conn: Connection, *, tenant_id: str, key: str, request_hash: str, instance_id: str, now: datetime
) -> None:
    # An expired row with the same key is replaced; the caller holds the write lock.
    conn.execute(
        delete(idempotency_t).where(idempotency_t.c.tenant_id == tenant_id, idempotency_t.c.key == key)
    )
    conn.execute(
        insert(idempotency_t).values(
            tenant_id=tenant_id, key=key, request_hash=request_hash, instance_id=instance_id, created_at=now
        )
    )


def forget_idempotency_keys(conn: Connection, older_than: datetime) -> int:
    return conn.execute(delete(idempotency_t).where(idempotency_t.c.created_at < older_than)).rowcount


def count_instances_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(instances_t.c.status, func.count()).group_by(instances_t.c.status))
    return {row[0]: int(row[1]) for row in rows}
