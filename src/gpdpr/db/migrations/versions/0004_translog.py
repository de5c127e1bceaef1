"""The transparency log: which log entry publishes each event (never public), and the tokens of
the people each research run included, for the patient's view.

Revision ID: 0004_translog
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_translog"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("log_seq", sa.Integer(), nullable=True))
    op.create_index("ix_events_log_seq", "events", ["log_seq"])
    op.create_table(
        "tre_run_uses",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["tre_runs.id"], name="fk_tre_run_uses_run_id_tre_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "token", name="pk_tre_run_uses"),
    )


def downgrade() -> None:
    op.drop_table("tre_run_uses")
    op.drop_index("ix_events_log_seq", table_name="events")
    op.drop_column("events", "log_seq")
