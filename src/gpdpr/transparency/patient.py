"""The patient's view: which approved projects' runs read my record, and my opt-out history.

The portal signs the person in, has the custodian turn their NHS number into their lake
pseudonym, and calls `record_uses`. Nothing public links a project to a person: the log holds
only what each run was (project, definition, lake version), and each run's folder keeps one
token per person read (`gpdpr.transparency.uses`), made with the run's project key from the
person's lake pseudonym (`gpdpr.custodian.central.run_use_token`). Without the custodian's key
and the person's pseudonym, a token cannot be made or tested; with them, a run's uses of one
person are found by one look-up per run. Runs recorded before the tokens were kept in files
keep them in the central table of run uses (`gpdpr.transparency.models.RunUse`), which is
still read for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.custodian.central import Custodian
from gpdpr.db.models import as_utc
from gpdpr.governance import register
from gpdpr.governance.models import Agreement, Application
from gpdpr.optout.registry import Registry
from gpdpr.transparency import uses
from gpdpr.transparency.models import RunUse
from gpdpr.tre.models import Run


@dataclass(frozen=True)
class RunSeen:
    """One run that read the person's record."""

    reference: str
    ran_on: date
    lake_version: int
    definition_sha256: str


@dataclass(frozen=True)
class ProjectUse:
    """An approved project whose runs read the person's record, with its register entry."""

    agreement: str
    application: str
    title: str
    organisations: list[str]
    purpose: str
    starts_on: str
    ends_on: str
    status: str
    runs: list[RunSeen]
    register_entry: dict[str, Any]  # the whole entry, exactly as the register publishes it


@dataclass(frozen=True)
class RecordUses:
    projects: list[ProjectUse]
    opt_outs: dict[str, dict[str, Any]]  # per kind: state, since, source, history (registry)


def record_uses(custodian: Custodian, lake_pseudonym: str, home: Path) -> RecordUses:
    """The approved projects whose successful runs read this person's record (oldest first),
    each with its register entry and the runs; and the person's opt-out history. `home`: the
    service's, whose run folders keep whom each run read."""
    from gpdpr.tre.runs import run_folder

    engine = custodian.engine
    with Session(engine) as session:
        runs = session.execute(
            sa.select(Run.id, Run.reference, Application.reference, Agreement.id)
            .join(Agreement, Agreement.id == Run.agreement_id)
            .join(Application, Application.id == Agreement.application_id)
            .where(Run.status == "succeeded")
            .order_by(Run.id)
        ).all()
        folders = {ref: run_folder(home, ref) for _, ref, _, _ in runs}
        salts = {ref: uses.basis(folder) for ref, folder in folders.items()}
        # One call: the custodian derives each project's key once, however many runs it made.
        # A run with a file of uses is tested under its salt; one recorded before, under its
        # reference (its tokens are in the database).
        tokens = custodian.use_tokens(
            lake_pseudonym, [(project, salts[ref] or ref) for _, ref, project, _ in runs]
        )
        seen: set[int] = set()
        in_database = []
        for run_id, ref, _, _ in runs:
            salted = salts[ref]
            if salted is None:
                in_database.append((run_id, tokens[ref]))
            elif uses.holds(folders[ref], tokens[salted]):
                seen.add(run_id)
        seen |= _runs_with(session, in_database)
        by_agreement: dict[int, list[Run]] = {}
        for run in session.scalars(sa.select(Run).where(Run.id.in_(seen)).order_by(Run.id)):
            by_agreement.setdefault(run.agreement_id, []).append(run)
        projects = [
            _project(session, session.get_one(Agreement, agreement_id), made)
            for agreement_id, made in by_agreement.items()
        ]
    return RecordUses(projects, Registry(engine).status(lake_pseudonym))


def _runs_with(session: Session, wanted: Iterable[tuple[int, str]]) -> set[int]:
    """The runs (ids) that kept the given token; in chunks, one query each."""
    pairs = list(wanted)
    found: set[int] = set()
    for start in range(0, len(pairs), 500):
        chunk = pairs[start : start + 500]
        condition = sa.or_(*(sa.and_(RunUse.run_id == r, RunUse.token == t) for r, t in chunk))
        found.update(session.scalars(sa.select(RunUse.run_id).where(condition)))
    return found


def _project(session: Session, agreement: Agreement, made: list[Run]) -> ProjectUse:
    entry = register.entry(session, agreement)
    return ProjectUse(
        agreement=agreement.reference,
        application=entry["application"],
        title=entry["title"],
        organisations=[o["name"] for o in entry["organisations"]],
        purpose=entry["purpose"],
        starts_on=entry["starts_on"],
        ends_on=entry["ends_on"],
        status=entry["status"],
        runs=[
            RunSeen(r.reference, as_utc(r.started_at).date(), r.lake_version, r.definition_sha256)
            for r in made
        ],
        register_entry=entry,
    )
