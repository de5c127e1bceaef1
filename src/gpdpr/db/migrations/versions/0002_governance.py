"""Governance: organisations and people, applications and their data items, the panel's
conflicts, votes and decisions, agreements and releases.

The allowed values in the check constraints are written out here, not imported, so that this
migration makes the same schema forever; a later change of vocabulary is a later migration.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('university', 'nhs_body', 'local_authority', 'charity', 'commercial')",
            name="ck_organisations_kind",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_organisations"),
        sa.UniqueConstraint("name", name="uq_organisations_name"),
    )
    op.create_table(
        "people",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("handle", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=200), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name="fk_people_organisation_id_organisations",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_people"),
        sa.UniqueConstraint("handle", name="uq_people_handle"),
    )
    op.create_index("ix_people_organisation_id", "people", ["organisation_id"], unique=False)
    op.create_table(
        "applications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("lead_applicant_id", sa.Integer(), nullable=False),
        sa.Column("purpose_category", sa.String(length=32), nullable=False),
        sa.Column("lay_summary", sa.Text(), nullable=False),
        sa.Column("technical_summary", sa.Text(), nullable=False),
        sa.Column("expected_benefit", sa.Text(), nullable=False),
        sa.Column("legal_basis", sa.String(length=64), nullable=False),
        sa.Column("data_from", sa.Date(), nullable=True),
        sa.Column("data_to", sa.Date(), nullable=True),
        sa.Column("commercial", sa.Boolean(), nullable=False),
        sa.Column("commercial_benefit", sa.Text(), nullable=False),
        sa.Column("uses_for_marketing", sa.Boolean(), nullable=False),
        sa.Column("uses_for_insurance", sa.Boolean(), nullable=False),
        sa.Column("ndoo_exemption", sa.String(length=32), nullable=True),
        sa.Column("ndoo_exemption_reason", sa.Text(), nullable=False),
        sa.Column("duration_months", sa.Integer(), nullable=False),
        sa.Column("population", sa.JSON(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("outcome_reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "ndoo_exemption IS NULL OR ndoo_exemption IN ("
            "'consent', 'legal_requirement', 'overriding_public_interest', "
            "'communicable_disease')",
            name="ck_applications_ndoo_exemption",
        ),
        sa.CheckConstraint(
            "purpose_category IN ("
            "'service_planning', 'public_health', 'research', 'policy', 'marketing', "
            "'insurance')",
            name="ck_applications_purpose_category",
        ),
        sa.CheckConstraint(
            "state IN ("
            "'draft', 'submitted', 'under_review', 'approved', 'refused', 'withdrawn', "
            "'agreement_active', 'expired', 'revoked')",
            name="ck_applications_state",
        ),
        sa.ForeignKeyConstraint(
            ["lead_applicant_id"], ["people.id"], name="fk_applications_lead_applicant_id_people"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_applications"),
        sa.UniqueConstraint("reference", name="uq_applications_reference"),
    )
    op.create_index(
        "ix_applications_lead_applicant_id", "applications", ["lead_applicant_id"], unique=False
    )
    op.create_index("ix_applications_state", "applications", ["state"], unique=False)
    op.create_table(
        "person_roles",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.CheckConstraint(
            "role IN ('applicant', 'panel_member', 'output_checker', 'administrator')",
            name="ck_person_roles_role",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name="fk_person_roles_person_id_people"
        ),
        sa.PrimaryKeyConstraint("person_id", "role", name="pk_person_roles"),
    )
    op.create_table(
        "agreements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("issued_by_id", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'expired', 'revoked')", name="ck_agreements_status"
        ),
        sa.CheckConstraint("ends_on > starts_on", name="ck_agreements_dates"),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name="fk_agreements_application_id_applications",
        ),
        sa.ForeignKeyConstraint(
            ["issued_by_id"], ["people.id"], name="fk_agreements_issued_by_id_people"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agreements"),
        sa.UniqueConstraint("application_id", name="uq_agreements_application_id"),
        sa.UniqueConstraint("reference", name="uq_agreements_reference"),
    )
    op.create_index("ix_agreements_status", "agreements", ["status"], unique=False)
    op.create_table(
        "application_organisations",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "role IN ('lead', 'collaborator', 'funder')", name="ck_application_organisations_role"
        ),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name="fk_application_organisations_application_id_applications",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name="fk_application_organisations_organisation_id_organisations",
        ),
        sa.PrimaryKeyConstraint(
            "application_id", "organisation_id", name="pk_application_organisations"
        ),
    )
    op.create_table(
        "conflicts",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("declared_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name="fk_conflicts_application_id_applications"
        ),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"], name="fk_conflicts_person_id_people"),
        sa.PrimaryKeyConstraint("application_id", "person_id", name="pk_conflicts"),
    )
    op.create_table(
        "data_items",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("field_name", sa.String(length=64), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name="fk_data_items_application_id_applications",
        ),
        sa.PrimaryKeyConstraint("application_id", "table_name", "field_name", name="pk_data_items"),
    )
    op.create_table(
        "decisions",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("minutes", sa.Text(), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("votes_for", sa.Integer(), nullable=False),
        sa.Column("votes_against", sa.Integer(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("recorded_by_id", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("outcome IN ('approved', 'refused')", name="ck_decisions_outcome"),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name="fk_decisions_application_id_applications"
        ),
        sa.ForeignKeyConstraint(
            ["recorded_by_id"], ["people.id"], name="fk_decisions_recorded_by_id_people"
        ),
        sa.PrimaryKeyConstraint("application_id", name="pk_decisions"),
    )
    op.create_table(
        "team_members",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name="fk_team_members_application_id_applications",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name="fk_team_members_person_id_people"
        ),
        sa.PrimaryKeyConstraint("application_id", "person_id", name="pk_team_members"),
    )
    op.create_table(
        "votes",
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("vote", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("cast_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("vote IN ('approve', 'refuse')", name="ck_votes_vote"),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name="fk_votes_application_id_applications"
        ),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"], name="fk_votes_person_id_people"),
        sa.PrimaryKeyConstraint("application_id", "person_id", name="pk_votes"),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agreement_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("first_checker_id", sa.Integer(), nullable=False),
        sa.Column("second_checker_id", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"], ["agreements.id"], name="fk_releases_agreement_id_agreements"
        ),
        sa.ForeignKeyConstraint(
            ["first_checker_id"], ["people.id"], name="fk_releases_first_checker_id_people"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["people.id"], name="fk_releases_requested_by_id_people"
        ),
        sa.ForeignKeyConstraint(
            ["second_checker_id"], ["people.id"], name="fk_releases_second_checker_id_people"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
    )
    op.create_index("ix_releases_agreement_id", "releases", ["agreement_id"], unique=False)


def downgrade() -> None:
    for table in (
        "releases",
        "votes",
        "team_members",
        "decisions",
        "data_items",
        "conflicts",
        "application_organisations",
        "agreements",
        "person_roles",
        "applications",
        "people",
        "organisations",
    ):
        op.drop_table(table)
