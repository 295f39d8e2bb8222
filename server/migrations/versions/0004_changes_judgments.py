"""Replicas: the change feed (``changes``) and the judgment queue (``judgments``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

Every replica's search index follows ``changes`` (a learnware accepted, withdrawn, or its
key revoked), and any replica takes a PENDING learnware's judgment from ``judgments``.
Learnwares PENDING before this revision get a free place in the queue here, so the first
replica to start judges them (as the single server did after a restart). The feed starts
empty: a replica loads the USABLE learnwares at start and follows from there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = "'ACCEPTED', 'WITHDRAWN', 'REVOKED'"

_QUEUE_PENDING = """
INSERT INTO judgments (learnware_id, enqueued_at, attempts)
SELECT id, updated_at, 0 FROM learnwares WHERE status = 'PENDING'
"""


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("learnware_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
        sa.CheckConstraint(f"kind IN ({_KINDS})", name=op.f("ck_changes_kind")),
    )
    op.create_table(
        "judgments",
        sa.Column("learnware_id", sa.String(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(
            ["learnware_id"],
            ["learnwares.id"],
            name=op.f("fk_judgments_learnware_id_learnwares"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("learnware_id", name=op.f("pk_judgments")),
    )
    op.execute(_QUEUE_PENDING)


def downgrade() -> None:
    op.drop_table("judgments")
    op.drop_table("changes")
