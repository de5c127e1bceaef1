"""Erasure beyond the lake: every other place in the service's home that can hold something of a
person, swept of the people a cycle erases (gpdpr.collect.erase does the lake itself).

A person is known outside the lake in three forms: their lake pseudonym, each project's
pseudonym of them (which only the custodian can derive, from a project's key), and the use tokens
a run keeps of whom it read (gpdpr.transparency.uses; only the custodian can make one). Place by
place:

- the research environment's run folders: each run's `uses.bin` loses their tokens, and runs
  recorded before tokens were kept in files lose their rows in the database's table of uses.
  A token names no one, but the custodian can make it again and so tell that the run read them,
  which is to say that they were in its population: people with some condition, medicine or
  history, known from the record they asked to have erased. So their tokens go with the rest.
  Run folders a run killed part-way left are removed. A run that was planned before someone
  opted out and is recorded only after their cycle would escape the sweep: so a run notes
  where the registry stood when it planned (`Mark`), and as it records, drops the tokens of
  everyone opted out or erased since (`forget_since`), before its file is in place and again
  once its record is committed (a cycle that ran in between swept only recorded runs);
- the engines' scratch folders in the system's temporary folder (gpdpr.tre.scratch): those of a
  process that is gone (an engine killed part-way) are removed; they may hold rows it computed on;
- refused packages: a refusal a killed `collect` left staged whole is finished, so only its
  reason and its manifest's summary remain; renamed packages a killed run was deleting are
  deleted (gpdpr.collect.service.sweep_loaded);
- the central database (SQLite): deleted rows are zeroed in place (gpdpr.db, secure_delete) and
  the write-ahead log, which holds pages as they were before, is emptied (`gpdpr.db.settle`).

What is kept, and holds no one: a run's outputs and the raw counts behind them (numbers of
people per cell, keyed by what was counted, never by whom), released files (the same numbers
after disclosure control, published), dummy data (a synthetic nation: nobody in it exists),
the transparency log (totals only). What must be kept of the person: the opt-out itself (the
registry, by lake pseudonym, to keep them out of every later load) and its receipt (by the
pseudonym's hash). A patient's portal session holds the same lake pseudonym as the registry, for
at most eight hours: a person who opted out and is still reading their record is not signed out.

Packages waiting in HOME/inbox are not touched (rewriting one would break its signature): the
cycle says how many wait, and `gpdpr collect` loads none of an opted-out person's rows from them
and deletes them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr import db
from gpdpr.custodian.central import Custodian
from gpdpr.db.models import DeletionReceipt, OptOutEvent
from gpdpr.db.transactions import immediate
from gpdpr.errors import UserError
from gpdpr.governance.models import Agreement, Application
from gpdpr.transparency import uses
from gpdpr.transparency.models import RunUse
from gpdpr.tre import runs as tre_runs
from gpdpr.tre import scratch
from gpdpr.tre.models import Run

BATCH = 500  # rows a statement


@dataclass
class Beyond:
    """What a cycle swept outside the lake."""

    runs: int = 0  # runs whose record of whom they read held someone erased
    tokens: int = 0  # use tokens removed, from files and the database
    refusals: int = 0  # refusals left staged by a killed `collect`, finished
    scratch: int = 0  # scratch folders killed engines left, removed
    waiting: list[Path] = field(default_factory=list)  # packages waiting in HOME/inbox
    settled: bool = True  # SQLite's write-ahead log emptied

    def add(self, other: Beyond) -> None:
        self.runs += other.runs
        self.tokens += other.tokens
        self.refusals += other.refusals
        self.scratch += other.scratch
        self.waiting = other.waiting
        self.settled = other.settled


def sweep(home: Path, keys: Path, engine: sa.Engine, people: Collection[str]) -> Beyond:
    """Sweep every place but the lake of these people (lake pseudonyms): see the module's
    docstring. Safe to run again: what is gone is not found twice."""
    from gpdpr.collect.refusals import finish
    from gpdpr.collect.service import sweep_loaded

    found = Beyond()
    found.refusals = finish(home / "rejected", lambda: db.connect(db.url_for_home(home)))
    inbox = home / "inbox"
    if inbox.is_dir():
        sweep_loaded(inbox)
        found.waiting = sorted(p for p in inbox.iterdir() if not p.name.startswith("."))
    tre_runs.tidy(home)
    found.scratch = scratch.sweep()
    if people:
        found.runs, found.tokens = _forget_uses(home, keys, engine, people)
    found.settled = db.settle(engine)
    return found


def _forget_uses(
    home: Path, keys: Path, engine: sa.Engine, people: Collection[str]
) -> tuple[int, int]:
    """Take these people's tokens out of every run's record of whom it read; (runs that held
    any, tokens removed)."""
    with Session(engine) as session:
        made = session.execute(
            sa.select(Run.id, Run.reference, Application.reference)
            .join(Agreement, Agreement.id == Run.agreement_id)
            .join(Application, Application.id == Agreement.application_id)
            .where(Run.status == "succeeded")  # only a run that succeeded keeps whom it read
            .order_by(Run.id)
        ).all()
    in_files: dict[str, Path] = {}
    salted: list[tuple[str, str]] = []
    in_table: dict[str, int] = {}
    for run_id, reference, project in made:
        folder = tre_runs.run_folder(home, reference)
        try:
            salt = uses.basis(folder)
        except ValueError as exc:
            raise UserError(
                f"{exc}: the erasure cycle cannot take the people it erases out of it, so it "
                f"stopped before their receipts. Restore {uses.FILE} of {reference} from a "
                "backup (or, if none, delete it: the run's record of whom it read is lost), "
                "then run `gpdpr erase` again"
            ) from None
        if salt is not None:
            in_files[salt] = folder
            salted.append((project, salt))
        else:  # recorded before tokens were kept in files: its tokens are in the database
            in_table[reference] = run_id
            salted.append((project, reference))
    if not salted:
        return 0, 0
    tokens = Custodian(keys, engine).erased_tokens(people, salted)
    touched = removed = 0
    for salt, folder in in_files.items():
        n = uses.forget(folder, tokens[salt])
        touched, removed = touched + (n > 0), removed + n
    with Session(immediate(engine)) as session, session.begin():
        for reference, run_id in in_table.items():
            listed = sorted(tokens[reference])
            n = 0
            for start in range(0, len(listed), BATCH):
                done = session.execute(
                    sa.delete(RunUse).where(
                        RunUse.run_id == run_id, RunUse.token.in_(listed[start : start + BATCH])
                    )
                )
                n += int(getattr(done, "rowcount", 0) or 0)
            touched, removed = touched + (n > 0), removed + n
    return touched, removed


@dataclass(frozen=True)
class Mark:
    """Where the opt-out registry stood when a run planned its views: its last opt-out event
    and last deletion receipt (each only ever appended to, by id)."""

    event: int
    receipt: int


def mark(engine: sa.Engine) -> Mark:
    with Session(engine) as session:
        event = session.scalar(sa.select(sa.func.max(OptOutEvent.id))) or 0
        receipt = session.scalar(sa.select(sa.func.max(DeletionReceipt.id))) or 0
    return Mark(event, receipt)


def opted_out_since(engine: sa.Engine, since: Mark) -> set[str]:
    """Everyone (lake pseudonyms) who set a Type 1 opt-out, or was erased, after `since`: a run
    planned then may have read them, and must not keep that it did."""
    with Session(engine) as session:
        set_since = session.scalars(
            sa.select(OptOutEvent.pseudonym).where(
                OptOutEvent.id > since.event,
                OptOutEvent.kind == "type1",
                OptOutEvent.action == "set",
            )
        )
        erased_since = session.scalars(
            sa.select(OptOutEvent.pseudonym)
            .join(DeletionReceipt, DeletionReceipt.opt_out_event_id == OptOutEvent.id)
            .where(DeletionReceipt.id > since.receipt)
        )
        return set(set_since) | set(erased_since)


def forget_since(keys: Path, engine: sa.Engine, project: str, folder: Path, since: Mark) -> int:
    """Take out of a run's file of uses (in `folder`, for `project`) everyone opted out or erased
    since the run planned (`since`); how many tokens were removed."""
    people = opted_out_since(engine, since)
    salt = uses.basis(folder)
    if not people or salt is None:
        return 0
    tokens = Custodian(keys, engine).erased_tokens(people, [(project, salt)])
    return uses.forget(folder, tokens[salt])
