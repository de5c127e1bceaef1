"""The central database's first schema: events, the opt-out registry, deletion receipts and
re-identification requests.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_kind", "events", ["kind"])


def _opt_out_events() -> None:
    op.create_table(
        "opt_out_events",
        sa.Column("id", sa.Integer(), autoincrement=True),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("effective_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_ref", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_opt_out_events"),
        sa.CheckConstraint("kind IN ('type1', 'ndoo')", name="ck_opt_out_events_kind"),
        sa.CheckConstraint("action IN ('set', 'withdrawn')", name="ck_opt_out_events_action"),
        sa.CheckConstraint(
            "source IN ('practice', 'online', 'proxy', 'central')",
            name="ck_opt_out_events_source",
        ),
    )
    op.create_index("ix_opt_out_events_pseudonym_kind", "opt_out_events", ["pseudonym", "kind"])


def _practice_type1() -> None:
    op.create_table(
        "practice_type1",
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("practice", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("as_of", sa.DateTime(), nullable=False),
        sa.Column("package_id", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("pseudonym", "practice", name="pk_practice_type1"),
        sa.CheckConstraint("state IN ('set', 'withdrawn')", name="ck_practice_type1_state"),
    )


def _deletion_receipts() -> None:
    op.create_table(
        "deletion_receipts",
        sa.Column("id", sa.Integer(), autoincrement=True),
        sa.Column("pseudonym_hash", sa.String(64), nullable=False),
        sa.Column("tables", sa.JSON(), nullable=False),
        sa.Column("rows_removed", sa.Integer(), nullable=False),
        sa.Column("lake_version", sa.Integer(), nullable=False),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
        sa.Column("opt_out_event_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deletion_receipts"),
        sa.ForeignKeyConstraint(
            ["opt_out_event_id"],
            ["opt_out_events.id"],
            name="fk_deletion_receipts_opt_out_event_id_opt_out_events",
        ),
    )
    op.create_index("ix_deletion_receipts_pseudonym_hash", "deletion_receipts", ["pseudonym_hash"])
    op.create_index(
        "ix_deletion_receipts_opt_out_event_id", "deletion_receipts", ["opt_out_event_id"]
    )


def _reidentification() -> None:
    op.create_table(
        "reid_requests",
        sa.Column("id", sa.Integer(), autoincrement=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("legal_basis", sa.String(64), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("identities", sa.Integer(), nullable=False),
        sa.Column("identities_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fulfilled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reid_requests"),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'fulfilled', 'refused')",
            name="ck_reid_requests_status",
        ),
    )
    op.create_table(
        "reid_approvals",
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("approver", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "approver", name="pk_reid_approvals"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reid_requests.id"],
            name="fk_reid_approvals_request_id_reid_requests",
        ),
    )


def upgrade() -> None:
    _events()
    _opt_out_events()
    _practice_type1()
    _deletion_receipts()
    _reidentification()


def downgrade() -> None:
    for table in (
        "reid_approvals",
        "reid_requests",
        "deletion_receipts",
        "practice_type1",
        "opt_out_events",
        "events",
    ):
        op.drop_table(table)
