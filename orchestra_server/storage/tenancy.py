"""Statements for tenants, roles and consumers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, delete, insert, select, update

from orchestra_server.storage.schema import (
    ConsumerRoleRow,
    ConsumerRow,
    RolePermissionRow,
    RoleRow,
    TenantRow,
)
from orchestra_server.wire.rate_limits import TenantRateLimit

tenants_t = cast(Table, TenantRow.__table__)
roles_t = cast(Table, RoleRow.__table__)
role_permissions_t = cast(Table, RolePermissionRow.__table__)
consumers_t = cast(Table, ConsumerRow.__table__)
consumer_roles_t = cast(Table, ConsumerRoleRow.__table__)


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    client_id: str
    tenant_id: str
    label: str | None
    secret_hash: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None


def tenant_exists(conn: Connection, tenant_id: str) -> bool:
    return conn.execute(select(tenants_t.c.id).where(tenants_t.c.id == tenant_id)).first() is not None


def insert_tenant(conn: Connection, tenant_id: str, label: str | None, now: datetime) -> None:
    conn.execute(insert(tenants_t).values(id=tenant_id, label=label, created_at=now))


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    label: str | None
    created_at: datetime
    # None: the edge's default limit applies.
    rate_limit: TenantRateLimit | None


def _rate_limit(rps: int | None, burst: int | None) -> TenantRateLimit | None:
    return None if rps is None or burst is None else TenantRateLimit(rps, burst)


def list_tenants(conn: Connection) -> list[TenantRecord]:
    rows = conn.execute(select(tenants_t).order_by(tenants_t.c.id))
    return [
        TenantRecord(r.id, r.label, r.created_at, _rate_limit(r.rate_limit_rps, r.rate_limit_burst))
        for r in rows
    ]


def set_tenant_rate_limit(conn: Connection, tenant_id: str, limit: TenantRateLimit | None) -> None:
    conn.execute(
        update(tenants_t)
        .where(tenants_t.c.id == tenant_id)
        .values(
            rate_limit_rps=None if limit is None else limit.requests_per_second,
            rate_limit_burst=None if limit is None else limit.burst,
        )
    )


def tenant_rate_limits(conn: Connection) -> dict[str, TenantRateLimit]:
    """The tenants that have a limit of their own, with it."""
    rows = conn.execute(
        select(tenants_t.c.id, tenants_t.c.rate_limit_rps, tenants_t.c.rate_limit_burst).where(
            tenants_t.c.rate_limit_rps.is_not(None), tenants_t.c.rate_limit_burst.is_not(None)
        )
    )
    return {r.id: TenantRateLimit(r.rate_limit_rps, r.rate_limit_burst) for r in rows}


def role_exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(roles_t.c.name).where(roles_t.c.name == name)).first() is not None


def insert_role(conn: Connection, name: str, now: datetime) -> None:
    conn.execute(insert(roles_t).values(name=name, created_at=now))


def role_permissions(conn: Connection, name: str) -> set[str]:
    rows = conn.execute(select(role_permissions_t.c.permission).where(role_permissions_t.c.role == name))
    return {r[0] for r in rows}


def grant(conn: Connection, role: str, permission: str) -> None:
    if permission not in role_permissions(conn, role):
        conn.execute(insert(role_permissions_t).values(role=role, permission=permission))


def revoke_permission(conn: Connection, role: str, permission: str) -> None:
    conn.execute(
        delete(role_permissions_t).where(
            role_permissions_t.c.role == role, role_permissions_t.c.permission == permission
        )
    )


def list_roles(conn: Connection) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {
        r[0]: [] for r in conn.execute(select(roles_t.c.name).order_by(roles_t.c.name))
    }
    for role, permission in conn.execute(
        select(role_permissions_t.c.role, role_permissions_t.c.permission).order_by(
            role_permissions_t.c.permission
        )
    ):
        roles.setdefault(role, []).append(permission)
    return roles


def insert_consumer(
    conn: Connection,
    *,
    client_id: str,
    tenant_id: str,
    label: str | None,
    secret_hash: str,
    roles: list[str],
    now: datetime,
) -> None:
    conn.execute(
        insert(consumers_t).values(
            client_id=client_id, tenant_id=tenant_id, label=label, secret_hash=secret_hash, created_at=now
        )
    )
    if roles:
        conn.execute(insert(consumer_roles_t), [{"client_id": client_id, "role": r} for r in roles])


def find_consumer(conn: Connection, client_id: str) -> ConsumerRecord | None:
    row = conn.execute(select(consumers_t).where(consumers_t.c.client_id == client_id)).first()
    if row is None:
        return None
    roles = tuple(
        r[0]
        for r in conn.execute(
            select(consumer_roles_t.c.role)
            .where(consumer_roles_t.c.client_id == client_id)
            .order_by(consumer_roles_t.c.role)
        )
    )
    permissions = frozenset(
        r[0]
        for r in conn.execute(
            select(role_permissions_t.c.permission).where(role_permissions_t.c.role.in_(roles))
        )
    )
    return ConsumerRecord(
        client_id=row.client_id,
        tenant_id=row.tenant_id,
        label=row.label,
        secret_hash=row.secret_hash,
        roles=roles,
        permissions=permissions,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def list_consumers(conn: Connection, tenant_id: str | None) -> list[ConsumerRecord]:
    query = select(consumers_t.c.client_id).order_by(consumers_t.c.created_at, consumers_t.c.client_id)
    if tenant_id is not None:
        query = query.where(consumers_t.c.tenant_id == tenant_id)
    records = [find_consumer(conn, r[0]) for r in conn.execute(query)]
    return [r for r in records if r is not None]


def revoke_consumer(conn: Connection, client_id: str, now: datetime) -> bool:
    result = conn.execute(
        update(consumers_t)
        .where(consumers_t.c.client_id == client_id, consumers_t.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount > 0
