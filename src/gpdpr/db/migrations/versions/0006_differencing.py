"""Differencing across everything one party has seen: `tre_seen_cells`, every cell shown to a
person inside the research environment or released by them, keyed by what it counts (a hash of
the canonical query), replacing `tre_released_cells`, whose cells were matched by their labels
within one agreement.

The old cells cannot be carried over: their labels say which group they describe in the words
of the file that published them, not what they count, and the key is a hash of the definition's
graph that the labels do not hold. They are dropped, and what was released before this
migration is no longer compared (nor was it across projects before). A request still awaiting
review keeps its cells in the old form; releasing it is refused with a clear message
(`release.checking`), and its author asks again.

Revision ID: 0006_differencing
Revises: 0005_portal
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_differencing"
down_revision: str | None = "0005_portal"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tre_seen_cells",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(length=200), nullable=False),
        sa.Column("raw", sa.BigInteger(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("released", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name="fk_tre_seen_cells_person_id_people"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["tre_runs.id"], name="fk_tre_seen_cells_run_id_tre_runs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tre_seen_cells"),
    )
    op.create_index("ix_tre_seen_cells_key", "tre_seen_cells", ["key"], unique=False)
    op.create_index("ix_tre_seen_cells_run_id", "tre_seen_cells", ["run_id"], unique=False)
    op.create_index(
        "ix_tre_seen_cells_person_id_run_id",
        "tre_seen_cells",
        ["person_id", "run_id"],
        unique=False,
    )
    op.drop_index("ix_tre_released_cells_request_id", table_name="tre_released_cells")
    op.drop_index("ix_tre_released_cells_agreement_id_dims", table_name="tre_released_cells")
    op.drop_table("tre_released_cells")


def downgrade() -> None:
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
    op.drop_table("tre_seen_cells")
