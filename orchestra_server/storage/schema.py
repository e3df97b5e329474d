"""The relational schema: typed ORM mappings used for migrations and by the repositories' statements."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

# The conditions of the tokens' partial indexes: only incident tokens are read through the
# incident indexes, only tokens with a due time through the scheduler's.
INCIDENT = text("status = 'incident'")
HAS_DUE_TIME = text("due_at IS NOT NULL")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def to_utc(value: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is refused (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC)


def stored_to_utc(value: datetime) -> datetime:
    """A datetime read back from storage, in UTC: naive ones were stored as UTC."""
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect (SQLite keeps naive UTC text that sorts correctly)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return stored_to_utc(value)


# Definitions shared by every tenant carry this tenant key.
SHARED_TENANT_KEY = ""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TenantRow(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The tenant's own request rate limit at the edge; both NULL: the edge's default applies.
    rate_limit_rps: Mapped[int | None] = mapped_column(Integer())
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer())


class RoleRow(Base):
    __tablename__ = "roles"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RolePermissionRow(Base):
    __tablename__ = "role_permissions"
    role: Mapped[str] = mapped_column(ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(128), primary_key=True)


class ConsumerRow(Base):
    __tablename__ = "consumers"
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The tenant binding is written once, at creation; nothing updates it.
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    label: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ConsumerRoleRow(Base):
    __tablename__ = "consumer_roles"
    client_id: Mapped[str] = mapped_column(
        ForeignKey("consumers.client_id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(ForeignKey("roles.name"), primary_key=True)


class DefinitionRow(Base):
    """One immutable version of a process definition."""

    __tablename__ = "definitions"
    __table_args__ = (UniqueConstraint("tenant_key", "definition_id", "version"),)
    pk: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    tenant_key: Mapped[str] = mapped_column(String(64))
    definition_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(500))
    deployed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = (
        # listInstances reads one page of one tenant, newest first, per filter.
        Index("ix_instances_tenant_seq", "tenant_id", "seq"),
        Index("ix_instances_tenant_definition_seq", "tenant_id", "definition_id", "seq"),
        Index("ix_instances_tenant_status_seq", "tenant_id", "status", "seq"),
        Index("ix_instances_tenant_definition_status_seq", "tenant_id", "definition_id", "status", "seq"),
        # SearchInstances by start time.
        Index("ix_instances_tenant_created_at", "tenant_id", "created_at"),
    )
    # Creation order across every process: the stable newest-first order and the page cursor.
    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    definition_id: Mapped[str] = mapped_column(String(64))
    definition_pk: Mapped[int] = mapped_column(ForeignKey("definitions.pk"))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # When the instance completed or was cancelled; NULL while it runs.
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TokenRow(Base):
    """A live token; consumed tokens are deleted (the audit trail keeps their history)."""

    __tablename__ = "tokens"
    __table_args__ = (
        Index("ix_tokens_instance_seq", "instance_seq"),
        # The scheduler's due tokens, soonest first. Partial, like the incident indexes below:
        # a token without a due time (most of them) writes nothing here when it comes or goes,
        # and every query reading these indexes names their condition.
        Index("ix_tokens_due", "due_at", sqlite_where=HAS_DUE_TIME, postgresql_where=HAS_DUE_TIME),
        # A tenant's incidents, oldest first.
        Index(
            "ix_tokens_incidents_since",
            "tenant_id",
            "since",
            "id",
            sqlite_where=INCIDENT,
            postgresql_where=INCIDENT,
        ),
        # The tenant's instances that have an incident, newest first (SearchInstances).
        Index(
            "ix_tokens_incidents_instance",
            "tenant_id",
            "instance_seq",
            sqlite_where=INCIDENT,
            postgresql_where=INCIDENT,
        ),
        # A tenant's live tokens at one node.
        Index("ix_tokens_tenant_node_status", "tenant_id", "node_id", "status"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_seq: Mapped[int] = mapped_column(ForeignKey("instances.seq", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    ordinal: Mapped[int] = mapped_column(Integer)
    arrived_by: Mapped[int | None] = mapped_column(Integer)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Incident tokens: the reason (for people), the kind and what a retry does (for programs).
    message: Mapped[str | None] = mapped_column(String(1000))
    incident_kind: Mapped[str | None] = mapped_column(String(32))
    retry: Mapped[str | None] = mapped_column(String(16))
    # When the token came to rest; NULL only on rows older than the column that nothing moved since.
    since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A scheduler's lease on a due token; another scheduler may take it once this passes.
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class VariableRow(Base):
    __tablename__ = "variables"
    # A search by value walks one tenant's matches of one name and value, newest instance
    # first, and stops at the page: other tenants' matches are never read.
    __table_args__ = (
        Index("ix_variables_tenant_name_digest_seq", "tenant_id", "name", "value_digest", "instance_seq"),
    )
    instance_seq: Mapped[int] = mapped_column(
        ForeignKey("instances.seq", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The instance's tenant, kept with each variable for the index above.
    tenant_id: Mapped[str] = mapped_column(String(64))
    # Canonical JSON text, so every JSON value (null included) round-trips exactly.
    value: Mapped[str] = mapped_column(Text)
    # SHA-256 of the value's comparison form (repository.value_digest): what a search by value
    # looks up, since values of up to 1 MiB cannot be indexed themselves.
    value_digest: Mapped[str | None] = mapped_column(String(64))


class AuditRow(Base):
    """Who changed what, when: one row per state change."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_tenant_seq", "tenant_id", "seq"),
        # One instance's history, oldest first.
        Index("ix_audit_tenant_instance_seq", "tenant_id", "instance_id", "seq"),
    )
    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    tenant_id: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str] = mapped_column(Text)


class IdempotencyKeyRow(Base):
    """A start request's idempotency key, kept so a retried start returns the first instance."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
