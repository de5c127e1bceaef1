"""The research environment's tables: runs, release requests with their files and the output
checkers' reviews, and every cell shown to someone or released, with its raw count.

They live in the central database beside governance (see `gpdpr.db.models` for the conventions:
naive UTC times, portable types, constraint names) and are made by migrations 0003 and 0006. A
run's definition is kept as the canonical JSON the service accepted, with its SHA-256, so a
release can be traced to exactly what made it. `SeenCell` holds raw (unrounded) counts: they
never leave the environment, and exist only so that what is shown or released later can be
checked for differencing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gpdpr.db.models import Base
from gpdpr.governance.models import Agreement, Person, Release, one_of

ENGINES = ("duckdb", "spark")
RUN_STATUSES = ("succeeded", "refused", "failed")
DISCLOSURE_RULES = ("round5", "midpoint6")
REQUEST_STATES = ("awaiting_review", "returned", "rejected", "released")
DECISIONS = ("approve", "reject", "return")


class Run(Base):
    """One run of a definition under an agreement, whatever came of it. `outputs` maps each
    output file's name to {"sha256", "bytes", "rows"}."""

    __tablename__ = "tre_runs"
    __table_args__ = (
        one_of("engine", ENGINES),
        one_of("status", RUN_STATUSES),
        one_of("disclosure_rule", DISCLOSURE_RULES),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(sa.String(32), unique=True)
    agreement_id: Mapped[int] = mapped_column(sa.ForeignKey("agreements.id"), index=True)
    requested_by_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), index=True)
    definition: Mapped[str] = mapped_column(sa.Text)
    definition_sha256: Mapped[str] = mapped_column(sa.String(64))
    lake_version: Mapped[int]
    engine: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outputs: Mapped[dict[str, Any]]
    disclosure_rule: Mapped[str] = mapped_column(sa.String(16))

    agreement: Mapped[Agreement] = relationship(lazy="joined")
    requested_by: Mapped[Person] = relationship(lazy="joined")


class ReleaseRequest(Base):
    """Some of a run's output files, waiting for two output checkers. `cells` are the cells of
    those files (`release.disclosure.Cell` as dicts, raw counts included), kept to be recorded
    as `SeenCell`s if the request is released."""

    __tablename__ = "tre_release_requests"
    __table_args__ = (one_of("state", REQUEST_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(sa.String(32), unique=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("tre_runs.id"), index=True)
    requested_by_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), index=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    description: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(32), index=True)
    cells: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    release_id: Mapped[int | None] = mapped_column(sa.ForeignKey("releases.id"), index=True)

    run: Mapped[Run] = relationship(lazy="joined")
    requested_by: Mapped[Person] = relationship(lazy="joined")
    release: Mapped[Release | None] = relationship(lazy="joined")
    files: Mapped[list[RequestFile]] = relationship(
        lazy="selectin", order_by="RequestFile.name", back_populates="request"
    )


class RequestFile(Base):
    """One file of a release request, as it was when requested."""

    __tablename__ = "tre_request_files"
    __table_args__ = (sa.UniqueConstraint("request_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(sa.ForeignKey("tre_release_requests.id"))
    name: Mapped[str] = mapped_column(sa.String(200))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    bytes: Mapped[int] = mapped_column(sa.BigInteger)

    request: Mapped[ReleaseRequest] = relationship(back_populates="files")
    reviews: Mapped[list[FileReview]] = relationship(
        lazy="selectin", order_by="(FileReview.at, FileReview.id)"
    )


class FileReview(Base):
    """One output checker's decision on one file; the key makes a second one impossible."""

    __tablename__ = "tre_file_reviews"
    __table_args__ = (sa.UniqueConstraint("file_id", "checker_id"), one_of("decision", DECISIONS))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    file_id: Mapped[int] = mapped_column(sa.ForeignKey("tre_request_files.id"))
    checker_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), index=True)
    decision: Mapped[str] = mapped_column(sa.String(8))
    comment: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime]

    checker: Mapped[Person] = relationship(lazy="joined")


class SeenCell(Base):
    """One number of a run's outputs as someone saw it: shown to `person` inside the environment
    (`released` false), or released by them to everyone (`released` true). `key` is what the
    number counts (`query.canonical`), `raw` its true value, `published` whether a number was
    shown for it (a suppressed group's cell is kept too: its absence was seen). The differencing
    check (`release.differencing`) reads them by key; they never leave the environment."""

    __tablename__ = "tre_seen_cells"
    __table_args__ = (sa.Index("ix_tre_seen_cells_person_id_run_id", "person_id", "run_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(64), index=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"))
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("tre_runs.id"), index=True)
    file: Mapped[str] = mapped_column(sa.String(200))
    raw: Mapped[int] = mapped_column(sa.BigInteger)
    published: Mapped[bool]
    released: Mapped[bool]
