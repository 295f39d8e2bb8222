"""Learnwares have versions and a download count (``LearnwareInfo.version``/``downloads``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A name belongs to its contributor's key; each submission of the same (key, name) is its
next version. Rows stored before this revision are numbered here in the order they were
stored (created_at, then id), so a name submitted twice before the upgrade has versions 1
and 2, and (key, name, version) can be unique. Their download count starts at 0: fetches
before the upgrade were not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NUMBER_EXISTING = """
UPDATE learnwares SET version = (
    SELECT COUNT(*) FROM learnwares AS earlier
    WHERE earlier.contributor_key_id = learnwares.contributor_key_id
      AND earlier.name = learnwares.name
      AND (earlier.created_at < learnwares.created_at
           OR (earlier.created_at = learnwares.created_at AND earlier.id <= learnwares.id))
)
"""


def upgrade() -> None:
    with op.batch_alter_table("learnwares") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(
            sa.Column("downloads", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute(_NUMBER_EXISTING)
    op.create_index(
        op.f("ix_learnwares_contributor_key_id_name_version"),
        "learnwares",
        ["contributor_key_id", "name", "version"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_learnwares_contributor_key_id_name_version"), "learnwares")
    with op.batch_alter_table("learnwares") as batch:
        batch.drop_column("downloads")
        batch.drop_column("version")
