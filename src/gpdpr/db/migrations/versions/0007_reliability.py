"""Exactly once and shared: a request id on online opt-out changes (unique, so a request sent
twice is recorded once); the portal's sessions and sign-in counters in the database (a restart
keeps them, workers share them); a second factor (TOTP) on portal credentials.

Revision ID: 0007_reliability
Revises: 0006_differencing
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_reliability"
down_revision: str | None = "0006_differencing"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ADD COLUMN and a unique index, not a batch copy of the table: on SQLite a copy
    # would drop opt_out_events, which deletion receipts refer to.
    op.add_column("opt_out_events", sa.Column("request_id", sa.String(length=64), nullable=True))
    op.create_index("ix_opt_out_events_request_id", "opt_out_events", ["request_id"], unique=True)
    op.add_column("portal_credentials", sa.Column("totp_secret", sa.String(64), nullable=True))
    op.add_column("portal_credentials", sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    op.create_table(
        "portal_sessions",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("seen", sa.Float(), nullable=False),
        sa.Column("handle", sa.String(length=64), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=True),
        sa.Column("pending", sa.JSON(), nullable=False),
        sa.Column("flash", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_portal_sessions"),
    )
    op.create_index("ix_portal_sessions_seen", "portal_sessions", ["seen"], unique=False)
    op.create_index("ix_portal_sessions_handle", "portal_sessions", ["handle"], unique=False)
    op.create_table(
        "portal_sign_in_counters",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_portal_sign_in_counters"),
    )


def downgrade() -> None:
    op.drop_table("portal_sign_in_counters")
    op.drop_index("ix_portal_sessions_handle", table_name="portal_sessions")
    op.drop_index("ix_portal_sessions_seen", table_name="portal_sessions")
    op.drop_table("portal_sessions")
    op.drop_column("portal_credentials", "totp_last_step")
    op.drop_column("portal_credentials", "totp_secret")
    op.drop_index("ix_opt_out_events_request_id", table_name="opt_out_events")
    op.drop_column("opt_out_events", "request_id")
