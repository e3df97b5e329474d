"""Variables carry their instance's tenant, and searches by value read one tenant's matches.

Before, the value index was (name, value_digest): a search by a common value (a status, a
customer shared by many instances) read every tenant's matches before keeping its own. The
new index (tenant_id, name, value_digest, instance_seq) gives one tenant's matches newest
first, so a page stops after its own rows. Existing rows take their instance's tenant.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("variables", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=64), nullable=True))
    instances = sa.table("instances", sa.column("seq"), sa.column("tenant_id"))
    variables = sa.table("variables", sa.column("instance_seq"), sa.column("tenant_id"))
    op.execute(
        variables.update().values(
            tenant_id=sa.select(instances.c.tenant_id)
            .where(instances.c.seq == variables.c.instance_seq)
            .scalar_subquery()
        )
    )
    with op.batch_alter_table("variables", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index("ix_variables_name_value_digest")
        batch_op.create_index(
            "ix_variables_tenant_name_digest_seq",
            ["tenant_id", "name", "value_digest", "instance_seq"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("variables", schema=None) as batch_op:
        batch_op.drop_index("ix_variables_tenant_name_digest_seq")
        batch_op.create_index("ix_variables_name_value_digest", ["name", "value_digest"], unique=False)
        batch_op.drop_column("tenant_id")
