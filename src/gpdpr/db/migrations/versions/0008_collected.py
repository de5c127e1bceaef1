"""The per-person index of collections: which package brought rows about whom, so a patient's
timeline reads one indexed table instead of every lake file.

Revision ID: 0008_collected
Revises: 0007_reliability
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_collected"
down_revision: str | None = "0007_reliability"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "collected",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pseudonym_hash", sa.String(length=64), nullable=False),
        sa.Column("package_id", sa.String(length=100), nullable=False),
        sa.Column("practice", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("extracted_at", sa.DateTime(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("lake_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_collected"),
        sa.UniqueConstraint("pseudonym_hash", "package_id", name="uq_collected_person_package"),
    )
    op.create_index("ix_collected_pseudonym_hash", "collected", ["pseudonym_hash"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_collected_pseudonym_hash", table_name="collected")
    op.drop_table("collected")
