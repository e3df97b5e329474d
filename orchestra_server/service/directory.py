"""Tenants, roles and consumers: who may call, and which tenant each consumer is bound to."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from orchestra_server.engine.model import Json
from orchestra_server.errors import InvalidArgument, NotFound
from orchestra_server.identity import client_secrets
from orchestra_server.identity.consumers import ACCESS_PERMISSION, ConsumerCredentials
from orchestra_server.storage import repository as repo
from orchestra_server.storage import tenancy
from orchestra_server.storage.database import Database
from orchestra_server.wire.rate_limits import TenantRateLimit

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
PERMISSION = re.compile(r"[a-z][a-z0-9 _.-]{0,127}")
# Given by `consumer create` when no role is named; created by the first migration.
BUILTIN_ROLE = "api_consumer"


@dataclass(frozen=True, slots=True)
class NewConsumer:
    client_id: str
    client_secret: str
    tenant: str


class DirectoryService:
    def __init__(self, database: Database, *, clock: Callable[[], datetime]) -> None:
        self._db = database
        self._clock = clock

    # --- tenants -----------------------------------------------------------------------------

    def create_tenant(self, tenant_id: str, label: str | None = None) -> None:
        if not TENANT_ID.fullmatch(tenant_id):
            raise InvalidArgument("tenant id must be lower-case letters, digits, '_' or '-' (at most 64)")
        with self._db.writing() as conn:
            if tenancy.tenant_exists(conn, tenant_id):
                raise InvalidArgument(f"tenant '{tenant_id}' exists already")
            now = self._clock()
            tenancy.insert_tenant(conn, tenant_id, label, now)
            self._audit(conn, now, tenant_id, "tenant.create", {"label": label})

    def list_tenants(self) -> list[tenancy.TenantRecord]:
        with self._db.reading() as conn:
            return tenancy.list_tenants(conn)

    def set_tenant_rate_limit(self, tenant_id: str, limit: TenantRateLimit | None) -> None:
        """Gives the tenant a request rate limit of its own at the edge (`TenantRateLimit.OFF`:
        none at all), or with None takes it away so the edge's default applies again."""
        problem = None if limit is None else limit.problem()
        if problem is not None:
            raise InvalidArgument(f"rate limit {limit}: {problem}")
        with self._db.writing() as conn:
            if not tenancy.tenant_exists(conn, tenant_id):
                raise NotFound(f"unknown tenant '{tenant_id}'")
            tenancy.set_tenant_rate_limit(conn, tenant_id, limit)
            detail = {"rate_limit": None if limit is None else str(limit)}
            self._audit(conn, self._clock(), tenant_id, "tenant.set_limit", detail)

    def tenant_rate_limits(self) -> dict[str, TenantRateLimit]:
        """The tenants that have a rate limit of their own, with it (what the edge applies)."""
        with self._db.reading() as conn:
            return tenancy.tenant_rate_limits(conn)

    # --- roles -------------------------------------------------------------------------------

    def create_role(self, name: str, permissions: list[str]) -> None:
        if not ROLE_NAME.fullmatch(name):
            raise InvalidArgument("role name must be a machine name: ^[a-z][a-z0-9_]{0,63}$")
        for permission in permissions:
            _check_permission(permission)
        with self._db.writing() as conn:
            if tenancy.role_exists(conn, name):
                raise InvalidArgument(f"role '{name}' exists already")
            now = self._clock()
            tenancy.insert_role(conn, name, now)
            for permission in permissions:
                tenancy.grant(conn, name, permission)
            self._audit(conn, now, "", "role.create", {"role": name, "permissions": permissions})

    def grant(self, role: str, permission: str) -> None:
        _check_permission(permission)
        with self._db.writing() as conn:
            self._require_role(conn, role)
            tenancy.grant(conn, role, permission)
            self._audit(conn, self._clock(), "", "role.grant", {"role": role, "permission": permission})

    def revoke(self, role: str, permission: str) -> None:
        with self._db.writing() as conn:
            self._require_role(conn, role)
            tenancy.revoke_permission(conn, role, permission)
            self._audit(conn, self._clock(), "", "role.revoke", {"role": role, "permission": permission})

    def list_roles(self) -> dict[str, list[str]]:
        with self._db.reading() as conn:
            return tenancy.list_roles(conn)

    # --- consumers ---------------------------------------------------------------------------

    def create_consumer(
        self, tenant: str, roles: list[str] | None = None, label: str | None = None
    ) -> NewConsumer:
        """Creates a consumer bound for good to `tenant`; the secret is returned once and only hashed."""
        roles = list(dict.fromkeys(roles or [BUILTIN_ROLE]))
        client_id = client_secrets.new_client_id()
        secret = client_secrets.new_client_secret()
        secret_hash = client_secrets.hash_secret(secret)
        with self._db.writing() as conn:
            if not tenancy.tenant_exists(conn, tenant):
                raise InvalidArgument(f"unknown tenant '{tenant}'")
            for role in roles:
                self._require_role(conn, role)
            now = self._clock()
            tenancy.insert_consumer(
                conn,
                client_id=client_id,
                tenant_id=tenant,
                label=label,
                secret_hash=secret_hash,
                roles=roles,
                now=now,
            )
            self._audit(conn, now, tenant, "consumer.create", {"client_id": client_id, "roles": roles})
        return NewConsumer(client_id, secret, tenant)

    def list_consumers(self, tenant: str | None = None) -> list[tenancy.ConsumerRecord]:
        with self._db.reading() as conn:
            return tenancy.list_consumers(conn, tenant)

    def revoke_consumer(self, client_id: str) -> None:
        with self._db.writing() as conn:
            record = tenancy.find_consumer(conn, client_id)
            if record is None:
                raise NotFound(f"no consumer '{client_id}'")
            now = self._clock()
            tenancy.revoke_consumer(conn, client_id, now)
            self._audit(conn, now, record.tenant_id, "consumer.revoke", {"client_id": client_id})

    def find_consumer(self, client_id: str) -> ConsumerCredentials | None:
        """The credentials the token endpoint and the authenticator check (ConsumerDirectory)."""
        with self._db.reading() as conn:
            record = tenancy.find_consumer(conn, client_id)
        if record is None:
            return None
        return ConsumerCredentials(
            client_id=record.client_id,
            secret_hash=record.secret_hash,
            tenant_id=record.tenant_id,
            permissions=record.permissions,
            revoked=record.revoked_at is not None,
        )

    def audit(self, tenant: str | None, limit: int = 100) -> list[dict[str, object]]:
        with self._db.reading() as conn:
            return repo.read_audit(conn, tenant, limit)

    def _require_role(self, conn: Connection, role: str) -> None:
        if not tenancy.role_exists(conn, role):
            raise InvalidArgument(f"unknown role '{role}'")

    def _audit(
        self, conn: Connection, now: datetime, tenant: str, action: str, detail: dict[str, Json]
    ) -> None:
        repo.record_audit(
            conn, at=now, tenant_id=tenant, actor="operator", action=action, instance_id=None, detail=detail
        )


def _check_permission(permission: str) -> None:
    if not PERMISSION.fullmatch(permission):
        raise InvalidArgument("permission must be lower-case words, e.g. 'access orchestra api'")


__all__ = ["ACCESS_PERMISSION", "BUILTIN_ROLE", "DirectoryService", "NewConsumer"]
