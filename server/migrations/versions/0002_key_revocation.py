"""Keys remember when and why they were revoked (``KeyInfo.revoked_at``/``revoke_reason``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Before this revision the reason lived only in the audit trail and ``ListKeys`` left the two
protocol fields empty. Keys revoked before the upgrade keep an empty reason and no time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("revoke_reason", sa.Text(), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("revoke_reason")
        batch.drop_column("revoked_at")
