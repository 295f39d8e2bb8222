"""Baseline: learnwares, their specs, registered keys and the audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out in full (no imports from ``server.db``): a migration states the schema as it
was at its revision, whatever the models say later. ``tests/test_store.py`` checks that
upgrading to head gives exactly what the models describe.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = "'PENDING', 'USABLE', 'REJECTED', 'WITHDRAWN'"
_ROLES = "'CONTRIBUTOR', 'USER', 'ADMIN'"


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "learnwares",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("domain", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("license", sa.String(), nullable=False),
        sa.Column("base_model_id", sa.String(), nullable=False),
        sa.Column("base_model_sha256", sa.String(), nullable=False),
        sa.Column("contributor_key_id", sa.String(), nullable=False),
        sa.Column("contributor_name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("package_sha256", sa.String(), nullable=False),
        sa.Column("package_size", sa.BigInteger(), nullable=False),
        sa.Column("manifest_json", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_learnwares")),
        sa.UniqueConstraint("package_sha256", name=op.f("uq_learnwares_package_sha256")),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name=op.f("ck_learnwares_status")),
    )
    for columns in (["base_model_id"], ["contributor_key_id"], ["domain"], ["status"]):
        op.create_index(op.f(f"ix_learnwares_{columns[0]}"), "learnwares", columns)
    op.create_index(op.f("ix_learnwares_created_at_id"), "learnwares", ["created_at", "id"])

    op.create_table(
        "specs",
        sa.Column("learnware_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("schema_id", sa.String(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("spec_bytes", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["learnware_id"],
            ["learnwares.id"],
            name=op.f("fk_specs_learnware_id_learnwares"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("learnware_id", "kind", name=op.f("pk_specs")),
    )
    op.create_index(op.f("ix_specs_kind"), "specs", ["kind"])

    op.create_table(
        "keys",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_keys")),
        sa.CheckConstraint(f"role IN ({_ROLES})", name=op.f("ck_keys_role")),
    )

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("learnware_id", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"])
    op.create_index(op.f("ix_events_learnware_id"), "events", ["learnware_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("keys")
    op.drop_table("specs")
    op.drop_table("learnwares")
