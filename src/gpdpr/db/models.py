"""The central database's tables, as SQLAlchemy 2 typed models.

The schema itself is made by the Alembic migrations beside this file, never by `create_all`: the
models say how code reads and writes rows, the migrations say how a database got its shape, and a
test checks the two agree. Only portable types are used so the same schema runs on SQLite
(embedded, the default) and PostgreSQL (deployment).

Times are stored as naive UTC (`TIMESTAMP WITHOUT TIME ZONE`) on every database, and come back as
timezone-aware UTC datetimes; a naive datetime handed in is taken to be UTC already.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Constraint names fixed by convention, so migrations can name what they alter or drop.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def as_utc(value: datetime) -> datetime:
    """A time as aware UTC; a naive time is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def naive_utc(value: datetime) -> datetime:
    """A time as naive UTC, the form stored; for bulk writes, which skip the conversion."""
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python, on every backend alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else naive_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: sa.JSON(),
    }


def core(model: type[Base]) -> sa.Table:
    """A model's table, for bulk statements that skip the ORM's per-row work."""
    return Base.metadata.tables[model.__tablename__]


class Event(Base):
    """One thing that happened, as the transparency log will publish it. `details` never holds an
    NHS number or a pseudonym: a person is referred to by `pseudonym_hash` only."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(sa.String(64), index=True)
    actor: Mapped[str] = mapped_column(sa.String(200))
    details: Mapped[dict[str, Any]]
    # The transparency log entry that publishes this event (None: not yet published). Kept here,
    # not in the log, so the public log links no event to the entry counting it.
    log_seq: Mapped[int | None] = mapped_column(index=True)


class OptOutEvent(Base):
    """A change to one person's opt-out: the registry's history, oldest first by id."""

    __tablename__ = "opt_out_events"
    __table_args__ = (
        sa.Index("ix_opt_out_events_pseudonym_kind", "pseudonym", "kind"),
        sa.CheckConstraint("kind IN ('type1', 'ndoo')", name="kind"),
        sa.CheckConstraint("action IN ('set', 'withdrawn')", name="action"),
        sa.CheckConstraint("source IN ('practice', 'online', 'proxy', 'central')", name="source"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    pseudonym: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(8))
    action: Mapped[str] = mapped_column(sa.String(16))
    effective_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(sa.String(16))
    source_ref: Mapped[str | None] = mapped_column(sa.String(100))
    # The form's one-time id for an online change: the same request sent twice (a double click,
    # a retry) is recorded once. None for changes that come without one.
    request_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True, index=True)


class PracticeType1(Base):
    """A practice's latest assertion about one patient's Type 1 opt-out, and when it was made."""

    __tablename__ = "practice_type1"
    __table_args__ = (sa.CheckConstraint("state IN ('set', 'withdrawn')", name="state"),)

    pseudonym: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    practice: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    as_of: Mapped[datetime]
    package_id: Mapped[str] = mapped_column(sa.String(100))


class DeletionReceipt(Base):
    """Proof that a Type 1 opt-out was carried out: what was erased from the lake, and when."""

    __tablename__ = "deletion_receipts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    pseudonym_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    tables: Mapped[dict[str, Any]]
    rows_removed: Mapped[int]
    lake_version: Mapped[int]
    erased_at: Mapped[datetime]
    opt_out_event_id: Mapped[int] = mapped_column(sa.ForeignKey("opt_out_events.id"), index=True)


class Collected(Base):
    """Which package brought rows about which person into the lake: the patient's timeline reads
    this, never the lake. Written with the load's public record, from the committed lake; the
    erasure cycle deletes a person's rows here with theirs in the lake (gpdpr.collect.received)."""

    __tablename__ = "collected"
    __table_args__ = (
        sa.UniqueConstraint("pseudonym_hash", "package_id", name="uq_collected_person_package"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    pseudonym_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    package_id: Mapped[str] = mapped_column(sa.String(100))
    practice: Mapped[str] = mapped_column(sa.String(16))
    kind: Mapped[str] = mapped_column(sa.String(16))
    extracted_at: Mapped[datetime]
    rows: Mapped[int]
    lake_version: Mapped[int]


class ReidRequest(Base):
    """A request to find project pseudonyms for named people. Holds no NHS number: only how many
    and a hash of the list, so the list handed over at fulfilment can be checked against it."""

    __tablename__ = "reid_requests"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'fulfilled', 'refused')", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(sa.String(200))
    legal_basis: Mapped[str] = mapped_column(sa.String(64))
    purpose: Mapped[str] = mapped_column(sa.Text)
    requested_by: Mapped[str] = mapped_column(sa.String(200))
    requested_at: Mapped[datetime]
    identities: Mapped[int]
    identities_sha256: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))
    fulfilled_at: Mapped[datetime | None]


class ReidApproval(Base):
    """One approver's approval of a re-identification request; two distinct ones are needed."""

    __tablename__ = "reid_approvals"

    request_id: Mapped[int] = mapped_column(sa.ForeignKey("reid_requests.id"), primary_key=True)
    approver: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    at: Mapped[datetime]
