"""The initial schema, the default tenant and the built-in consumer role.

Revision ID: 0001
Revises: -
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# Held by the role that `orchestra consumer create` gives when no role is named.
ACCESS_PERMISSION = "access orchestra api"
BUILTIN_ROLE = "api_consumer"


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit")),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index("ix_audit_tenant_seq", ["tenant_id", "seq"], unique=False)

    op.create_table(
        "definitions",
        sa.Column(
            "pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("tenant_key", sa.String(length=64), nullable=False),
        sa.Column("definition_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_definitions")),
        sa.UniqueConstraint(
            "tenant_key",
            "definition_id",
            "version",
            name=op.f("uq_definitions_tenant_key_definition_id_version"),
        ),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_created_at", ["created_at"], unique=False)

    op.create_table(
        "roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_roles")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "consumers",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("secret_hash", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_consumers_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_consumers")),
    )
    op.create_table(
        "instances",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("definition_id", sa.String(length=64), nullable=False),
        sa.Column("definition_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["definition_pk"], ["definitions.pk"], name=op.f("fk_instances_definition_pk_definitions")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_instances")),
        sa.UniqueConstraint("id", name=op.f("uq_instances_id")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(
            "ix_instances_tenant_definition_seq", ["tenant_id", "definition_id", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_instances_tenant_definition_status_seq",
            ["tenant_id", "definition_id", "status", "seq"],
            unique=False,
        )
        batch_op.create_index("ix_instances_tenant_seq", ["tenant_id", "seq"], unique=False)
        batch_op.create_index("ix_instances_tenant_status_seq", ["tenant_id", "status", "seq"], unique=False)

    op.create_table(
        "role_permissions",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("permission", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["role"], ["roles.name"], name=op.f("fk_role_permissions_role_roles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("role", "permission", name=op.f("pk_role_permissions")),
    )
    op.create_table(
        "consumer_roles",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["consumers.client_id"],
            name=op.f("fk_consumer_roles_client_id_consumers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], name=op.f("fk_consumer_roles_role_roles")),
        sa.PrimaryKeyConstraint("client_id", "role", name=op.f("pk_consumer_roles")),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("instance_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("arrived_by", sa.Integer(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_seq"],
            ["instances.seq"],
            name=op.f("fk_tokens_instance_seq_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index("ix_tokens_due_at", ["due_at"], unique=False)
        batch_op.create_index("ix_tokens_instance_seq", ["instance_seq"], unique=False)

    op.create_table(
        "variables",
        sa.Column("instance_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_seq"],
            ["instances.seq"],
            name=op.f("fk_variables_instance_seq_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_seq", "name", name=op.f("pk_variables")),
    )

    now = datetime.now(UTC)
    op.bulk_insert(
        sa.table(
            "tenants",
            sa.column("id"),
            sa.column("label"),
            sa.column("created_at", sa.DateTime(timezone=True)),
        ),
        [{"id": "default", "label": "Default tenant", "created_at": now}],
    )
    op.bulk_insert(
        sa.table("roles", sa.column("name"), sa.column("created_at", sa.DateTime(timezone=True))),
        [{"name": BUILTIN_ROLE, "created_at": now}],
    )
    op.bulk_insert(
        sa.table("role_permissions", sa.column("role"), sa.column("permission")),
        [{"role": BUILTIN_ROLE, "permission": ACCESS_PERMISSION}],
    )


def downgrade() -> None:
    op.drop_table("variables")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_instance_seq")
        batch_op.drop_index("ix_tokens_due_at")

    op.drop_table("tokens")
    op.drop_table("consumer_roles")
    op.drop_table("role_permissions")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_tenant_status_seq")
        batch_op.drop_index("ix_instances_tenant_seq")
        batch_op.drop_index("ix_instances_tenant_definition_status_seq")
        batch_op.drop_index("ix_instances_tenant_definition_seq")

    op.drop_table("instances")
    op.drop_table("consumers")
    op.drop_table("tenants")
    op.drop_table("roles")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_created_at")

    op.drop_table("idempotency_keys")
    op.drop_table("definitions")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_tenant_seq")

    op.drop_table("audit")
