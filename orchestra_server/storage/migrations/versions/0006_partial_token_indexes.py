"""The tokens' incident and due-time indexes hold only the rows they are read for.

The two incident indexes (a tenant's incidents oldest first; the tenant's instances with an
incident, newest first) and the due-time index held every token, so each token that came or
went (every start, signal and timer firing) wrote a page of each of them. Only incident tokens
are ever read through the first two and only tokens with a due time through the third: as
partial indexes they hold just those, stay small, and other tokens leave them alone. A start
writes about 20 pages instead of 24, a signal 13-14 instead of 16. Every query that reads them
names the same condition (`status = 'incident'`, or a bound on `due_at`), which is what lets
the planner use a partial index.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INCIDENT = sa.text("status = 'incident'")
HAS_DUE_TIME = sa.text("due_at IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_tokens_tenant_status_since", table_name="tokens")
    op.drop_index("ix_tokens_tenant_status_instance", table_name="tokens")
    op.drop_index("ix_tokens_due_at", table_name="tokens")
    op.create_index(
        "ix_tokens_incidents_since",
        "tokens",
        ["tenant_id", "since", "id"],
        sqlite_where=INCIDENT,
        postgresql_where=INCIDENT,
    )
    op.create_index(
        "ix_tokens_incidents_instance",
        "tokens",
        ["tenant_id", "instance_seq"],
        sqlite_where=INCIDENT,
        postgresql_where=INCIDENT,
    )
    op.create_index(
        "ix_tokens_due", "tokens", ["due_at"], sqlite_where=HAS_DUE_TIME, postgresql_where=HAS_DUE_TIME
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_due", table_name="tokens")
    op.drop_index("ix_tokens_incidents_instance", table_name="tokens")
    op.drop_index("ix_tokens_incidents_since", table_name="tokens")
    op.create_index("ix_tokens_due_at", "tokens", ["due_at"])
    op.create_index("ix_tokens_tenant_status_instance", "tokens", ["tenant_id", "status", "instance_seq"])
    op.create_index("ix_tokens_tenant_status_since", "tokens", ["tenant_id", "status", "since", "id"])
