"""Incidents as data: a token's incident kind and retry, and since when every token rests.

Incidents recorded before this revision get a kind from what they are known to be: the old
step-limit text marks a step-limit incident; any other is `unclassified` and is retried as it
always was. A token already at rest is taken to rest since its instance last changed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The text every step-limit incident carried before incidents had a kind.
OLD_STEP_LIMIT_TEXT = "step limit reached: too many automatic moves in one step (a cycle without a wait?)"


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("incident_kind", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("retry", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("since", sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table(
        "tokens",
        sa.column("instance_seq"),
        sa.column("status"),
        sa.column("message"),
        sa.column("incident_kind"),
        sa.column("retry"),
        sa.column("since"),
    )
    instances = sa.table("instances", sa.column("seq"), sa.column("updated_at"))
    op.execute(
        tokens.update()
        .where(tokens.c.status == "incident", tokens.c.message == OLD_STEP_LIMIT_TEXT)
        .values(incident_kind="step_limit", retry="arrive")
    )
    op.execute(
        tokens.update()
        .where(tokens.c.status == "incident", tokens.c.incident_kind.is_(None))
        .values(incident_kind="unclassified")
    )
    op.execute(
        tokens.update().values(
            since=sa.select(instances.c.updated_at)
            .where(instances.c.seq == tokens.c.instance_seq)
            .scalar_subquery()
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("since")
        batch_op.drop_column("retry")
        batch_op.drop_column("incident_kind")
