"""Governance tables: organisations and people, applications with their data items, the panel's
conflicts, votes and decisions, agreements, and the releases made under them.

They share the central database (and its migrations) with the event record and the opt-out
registry; see `gpdpr.db.models` for the conventions (naive UTC times, portable types, constraint
names). Lists that belong to one row and are only ever read with it (conditions, a population
restriction, a release's files) are JSON; everything the register or a check filters on is a
column.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gpdpr.db.models import Base
from gpdpr.governance.vocabulary import (
    CATEGORIES,
    NDOO_EXEMPTIONS,
    ORGANISATION_KINDS,
    ROLES,
    STATES,
)


def one_of(column: str, values: Any, name: str | None = None) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=name or column)


class Organisation(Base):
    __tablename__ = "organisations"
    __table_args__ = (one_of("kind", ORGANISATION_KINDS),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime]


class Person(Base):
    """Someone who takes part: `handle` is how they are named in commands and the public record
    (a panel's members are public; an applicant's contact email is not)."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    handle: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    email: Mapped[str] = mapped_column(sa.String(200))
    organisation_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organisations.id"), index=True
    )
    created_at: Mapped[datetime]

    organisation: Mapped[Organisation | None] = relationship(lazy="joined")
    role_rows: Mapped[list[PersonRole]] = relationship(
        lazy="selectin", cascade="all, delete-orphan"
    )

    @property
    def roles(self) -> set[str]:
        return {r.role for r in self.role_rows}


class PersonRole(Base):
    __tablename__ = "person_roles"
    __table_args__ = (one_of("role", ROLES),)

    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(32), primary_key=True)


class Application(Base):
    """A data access request, from draft to the end of its agreement. Only a draft is ever
    edited; what the panel saw is what the agreement grants."""

    __tablename__ = "applications"
    __table_args__ = (
        one_of("state", STATES),
        one_of("purpose_category", CATEGORIES),
        sa.CheckConstraint(
            f"ndoo_exemption IS NULL OR ndoo_exemption IN "
            f"({', '.join(repr(k) for k in NDOO_EXEMPTIONS)})",
            name="ndoo_exemption",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(sa.String(32), unique=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    state: Mapped[str] = mapped_column(sa.String(32), index=True)
    lead_applicant_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), index=True)
    purpose_category: Mapped[str] = mapped_column(sa.String(32))
    lay_summary: Mapped[str] = mapped_column(sa.Text)
    technical_summary: Mapped[str] = mapped_column(sa.Text)
    expected_benefit: Mapped[str] = mapped_column(sa.Text)
    legal_basis: Mapped[str] = mapped_column(sa.String(64))
    data_from: Mapped[date | None]
    data_to: Mapped[date | None]
    commercial: Mapped[bool]
    commercial_benefit: Mapped[str] = mapped_column(sa.Text)
    uses_for_marketing: Mapped[bool]
    uses_for_insurance: Mapped[bool]
    ndoo_exemption: Mapped[str | None] = mapped_column(sa.String(32))
    ndoo_exemption_reason: Mapped[str] = mapped_column(sa.Text)
    duration_months: Mapped[int]
    population: Mapped[dict[str, Any]]  # min_age, max_age, sexes, regions: absent = everyone
    flags: Mapped[list[str]] = mapped_column(sa.JSON)  # for the panel, set on submission
    outcome_reason: Mapped[str] = mapped_column(sa.Text)  # why refused or withdrawn
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]

    lead_applicant: Mapped[Person] = relationship(lazy="joined")
    organisations: Mapped[list[ApplicationOrganisation]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="ApplicationOrganisation.position"
    )
    team: Mapped[list[TeamMember]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="TeamMember.person_id"
    )
    items: Mapped[list[DataItem]] = relationship(
        lazy="selectin",
        cascade="all, delete-orphan",
        order_by="(DataItem.table_name, DataItem.field_name)",
    )


class ApplicationOrganisation(Base):
    """An organisation on an application: the lead (the lead applicant's), collaborators and
    funders. Every one of them conflicts a panel member who belongs to it."""

    __tablename__ = "application_organisations"
    __table_args__ = (one_of("role", ("lead", "collaborator", "funder")),)

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organisations.id"), primary_key=True
    )
    role: Mapped[str] = mapped_column(sa.String(16))
    position: Mapped[int]

    organisation: Mapped[Organisation] = relationship(lazy="joined")


class TeamMember(Base):
    """A named person on an application: only they may use the data under its agreement."""

    __tablename__ = "team_members"

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)

    person: Mapped[Person] = relationship(lazy="joined")


class DataItem(Base):
    """One field of the data specification asked for, and why it is needed."""

    __tablename__ = "data_items"

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    table_name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    field_name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    justification: Mapped[str] = mapped_column(sa.Text)


class Conflict(Base):
    """A panel member's declared conflict of interest on one application."""

    __tablename__ = "conflicts"

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    declared_at: Mapped[datetime]

    person: Mapped[Person] = relationship(lazy="joined")


class Vote(Base):
    """One panel member's vote; the key makes a second vote impossible, not merely refused."""

    __tablename__ = "votes"
    __table_args__ = (one_of("vote", ("approve", "refuse")),)

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)
    vote: Mapped[str] = mapped_column(sa.String(8))
    comment: Mapped[str] = mapped_column(sa.Text)
    cast_at: Mapped[datetime]

    person: Mapped[Person] = relationship(lazy="joined")


class Decision(Base):
    """The panel's decision, with the minutes that are published beside it."""

    __tablename__ = "decisions"
    __table_args__ = (one_of("outcome", ("approved", "refused")),)

    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(sa.String(16))
    minutes: Mapped[str] = mapped_column(sa.Text)
    conditions: Mapped[list[str]] = mapped_column(sa.JSON)
    votes_for: Mapped[int]
    votes_against: Mapped[int]
    quorum: Mapped[int]
    recorded_by_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    decided_at: Mapped[datetime]


class Agreement(Base):
    """What an approved application may use, from when until when. Access is granted by the
    dates and `revoked_at`, not by `status`: at the end date access stops with nobody acting,
    and `status` catches up (for the register) whenever governance next runs."""

    __tablename__ = "agreements"
    __table_args__ = (
        one_of("status", ("active", "expired", "revoked")),
        sa.CheckConstraint("ends_on > starts_on", name="dates"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(sa.String(32), unique=True)
    application_id: Mapped[int] = mapped_column(sa.ForeignKey("applications.id"), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    starts_on: Mapped[date]
    ends_on: Mapped[date]  # the first day without access
    scope: Mapped[dict[str, Any]]  # tables -> fields, data dates, population, opt-outs
    conditions: Mapped[list[str]] = mapped_column(sa.JSON)
    issued_by_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    issued_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str] = mapped_column(sa.Text)

    application: Mapped[Application] = relationship(lazy="joined")
    releases: Mapped[list[Release]] = relationship(lazy="selectin", order_by="Release.id")


class Release(Base):
    """Results that left the research environment under an agreement, after two checkers,
    with what made them: the run, the lake version it read and the query definition (the
    canonical JSON whose SHA-256 is `code_sha256`). Those three are empty only for releases
    recorded before the research environment kept them."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    agreement_id: Mapped[int] = mapped_column(sa.ForeignKey("agreements.id"), index=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    description: Mapped[str] = mapped_column(sa.Text)
    code_sha256: Mapped[str] = mapped_column(sa.String(64))
    files: Mapped[dict[str, Any]]  # file name -> sha256
    requested_by_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    first_checker_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    second_checker_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    released_at: Mapped[datetime]
    run_reference: Mapped[str | None] = mapped_column(sa.String(32))
    lake_version: Mapped[int | None]
    definition: Mapped[str | None] = mapped_column(sa.Text)
