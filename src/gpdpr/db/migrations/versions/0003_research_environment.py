"""The research environment: runs, release requests with their files and the output checkers'
reviews, the raw counts of released cells (for the differencing check, never published); and on
each release, what made it: the run, the lake version and the query definition.

The allowed values in the check constraints are written out here, not imported, so that this
migration makes the same schema forever; a later change of vocabulary is a later migration.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("releases", sa.Column("run_reference", sa.String(length=32), nullable=True))
    op.add_column("releases", sa.Column("lake_version", sa.Integer(), nullable=True))
    op.add_column("releases", sa.Column("definition", sa.Text(), nullable=True))
    op.create_table(
        "tre_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("agreement_id", sa.Integer(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("definition_sha256", sa.String(length=64), nullable=False),
        sa.Column("lake_version", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("disclosure_rule", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "disclosure_rule IN ('round5', 'midpoint6')", name="ck_tre_runs_disclosure_rule"
        ),
        sa.CheckConstraint("engine IN ('duckdb', 'spark')", name="ck_tre_runs_engine"),
        sa.CheckConstraint(
            "status IN ('succeeded', 'refused', 'failed')", name="ck_tre_runs_status"
        ),
        sa.ForeignKeyConstraint(
            ["agreement_id"], ["agreements.id"], name="fk_tre_runs_agreement_id_agreements"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["people.id"], name="fk_tre_runs_requested_by_id_people"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_runs"),
        sa.UniqueConstraint("reference", name="uq_tre_runs_reference"),
    )
    op.create_index("ix_tre_runs_agreement_id", "tre_runs", ["agreement_id"], unique=False)
    op.create_index("ix_tre_runs_requested_by_id", "tre_runs", ["requested_by_id"], unique=False)
    op.create_table(
        "tre_release_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("release_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "state IN ('awaiting_review', 'returned', 'rejected', 'released')",
            name="ck_tre_release_requests_state",
        ),
        sa.ForeignKeyConstraint(
            ["release_id"], ["releases.id"], name="fk_tre_release_requests_release_id_releases"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"],
            ["people.id"],
            name="fk_tre_release_requests_requested_by_id_people",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["tre_runs.id"], name="fk_tre_release_requests_run_id_tre_runs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_release_requests"),
        sa.UniqueConstraint("reference", name="uq_tre_release_requests_reference"),
    )
    for column in ("release_id", "requested_by_id", "run_id", "state"):
        op.create_index(
            f"ix_tre_release_requests_{column}", "tre_release_requests", [column], unique=False
        )
    op.create_table(
        "tre_request_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["tre_release_requests.id"],
            name="fk_tre_request_files_request_id_tre_release_requests",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_request_files"),
        sa.UniqueConstraint("request_id", "name", name="uq_tre_request_files_request_id"),
    )
    op.create_table(
        "tre_file_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("checker_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "decision IN ('approve', 'reject', 'return')", name="ck_tre_file_reviews_decision"
        ),
        sa.ForeignKeyConstraint(
            ["checker_id"], ["people.id"], name="fk_tre_file_reviews_checker_id_people"
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["tre_request_files.id"],
            name="fk_tre_file_reviews_file_id_tre_request_files",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_file_reviews"),
        sa.UniqueConstraint("file_id", "checker_id", name="uq_tre_file_reviews_file_id"),
    )
    op.create_index(
        "ix_tre_file_reviews_checker_id", "tre_file_reviews", ["checker_id"], unique=False
    )
    op.create_table(
        "tre_released_cells",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agreement_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(length=200), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("column", sa.String(length=200), nullable=False),
        sa.Column("dims", sa.String(length=500), nullable=False),
        sa.Column("raw", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name="fk_tre_released_cells_agreement_id_agreements",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["tre_release_requests.id"],
            name="fk_tre_released_cells_request_id_tre_release_requests",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_released_cells"),
    )
    op.create_index(
        "ix_tre_released_cells_agreement_id_dims",
        "tre_released_cells",
        ["agreement_id", "dims"],
        unique=False,
    )
    op.create_index(
        "ix_tre_released_cells_request_id", "tre_released_cells", ["request_id"], unique=False
    )


def downgrade() -> None:
    for table in (
        "tre_released_cells",
        "tre_file_reviews",
        "tre_request_files",
        "tre_release_requests",
        "tre_runs",
    ):
        op.drop_table(table)
    with op.batch_alter_table("releases") as batch:
        for column in ("definition", "lake_version", "run_reference"):
            batch.drop_column(column)
