"""What the operations API reads: when an instance ended, and indexes that keep its searches flat.

`instances.ended_at` is set when an instance completes or is cancelled; instances that ended
before this revision take the time they last changed, which is when they ended. Each
variable gets `value_digest`, the digest of its value's comparison form, computed here for the
values already stored. Tokens that never recorded since when they rest (none should be left
after 0002) take their instance's last change, so every incident has a place in the oldest-first
order.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orchestra_server.storage.repository import value_digest

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BACKFILL_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_instances_tenant_created_at", ["tenant_id", "created_at"], unique=False)
    with op.batch_alter_table("variables", schema=None) as batch_op:
        batch_op.add_column(sa.Column("value_digest", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_variables_name_value_digest", ["name", "value_digest"], unique=False)
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tokens_tenant_status_since", ["tenant_id", "status", "since", "id"], unique=False
        )
        batch_op.create_index(
            "ix_tokens_tenant_node_status", ["tenant_id", "node_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_tokens_tenant_status_instance", ["tenant_id", "status", "instance_seq"], unique=False
        )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_tenant_instance_seq", ["tenant_id", "instance_id", "seq"], unique=False
        )

    instances = sa.table(
        "instances", sa.column("seq"), sa.column("status"), sa.column("updated_at"), sa.column("ended_at")
    )
    op.execute(
        instances.update().where(instances.c.status != "running").values(ended_at=instances.c.updated_at)
    )
    tokens = sa.table("tokens", sa.column("instance_seq"), sa.column("since"))
    op.execute(
        tokens.update()
        .where(tokens.c.since.is_(None))
        .values(
            since=sa.select(instances.c.updated_at)
            .where(instances.c.seq == tokens.c.instance_seq)
            .scalar_subquery()
        )
    )
    variables = sa.table(
        "variables",
        sa.column("instance_seq"),
        sa.column("name"),
        sa.column("value"),
        sa.column("value_digest"),
    )
    conn = op.get_bind()
    while True:
        rows = conn.execute(
            sa.select(variables.c.instance_seq, variables.c.name, variables.c.value)
            .where(variables.c.value_digest.is_(None))
            .limit(_BACKFILL_BATCH)
        ).all()
        if not rows:
            break
        for seq, name, value in rows:
            conn.execute(
                variables.update()
                .where(variables.c.instance_seq == seq, variables.c.name == name)
                .values(value_digest=value_digest(value))
            )


def downgrade() -> None:
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_tenant_instance_seq")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_tenant_status_instance")
        batch_op.drop_index("ix_tokens_tenant_node_status")
        batch_op.drop_index("ix_tokens_tenant_status_since")
    with op.batch_alter_table("variables", schema=None) as batch_op:
        batch_op.drop_index("ix_variables_name_value_digest")
        batch_op.drop_column("value_digest")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_tenant_created_at")
        batch_op.drop_column("ended_at")
