"""A tenant's own request rate limit at the edge (`orchestra tenant set-limit`).

Both columns NULL, as for every tenant stored before: the edge's default limit applies.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limit_rps", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rate_limit_burst", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("rate_limit_burst")
        batch_op.drop_column("rate_limit_rps")
