"""The portal: password hashes (argon2) for the people who sign in to it with one.

Revision ID: 0005_portal
Revises: 0004_translog
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_portal"
down_revision: str | None = "0004_translog"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "portal_credentials",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name="fk_portal_credentials_person_id_people"
        ),
        sa.PrimaryKeyConstraint("person_id", name="pk_portal_credentials"),
    )


def downgrade() -> None:
    op.drop_table("portal_credentials")
