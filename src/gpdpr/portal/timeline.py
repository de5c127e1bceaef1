"""One patient's whole story with the service, for their eyes only: which practices sent data
about them and when (the packages their rows in the lake came in), every change to their
opt-outs, each erasure with its date and receipt, and every approved project run that read their
record. Worked out on request from the pseudonym the custodian gave their sign-in, from the
central database alone: which packages held them is the collections index made at load time
(gpdpr.collect.received), so a view reads no lake file. Nothing public links any of it to them.

What it tells apart: "we hold nothing about you" (no package brought a row about them into the
lake, or what did was erased) from "we hold your record and nobody has used it". Only the
signed-in person sees which is theirs. (A record a practice later deleted, or stopped sending,
still shows as sent: the index says what arrived, not what is left of it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.collect.received import collected_about
from gpdpr.db import pseudonym_hash
from gpdpr.db.models import DeletionReceipt, as_utc
from gpdpr.transparency.patient import RecordUses

NAMES = {"type1": "Type 1 opt-out", "ndoo": "National Data Opt-out"}
SOURCE_WORDS = {
    "online": "You did this online.",
    "proxy": "Someone acting for you did this.",
    "central": "Recorded by the service.",
    "practice": "Your GP practice recorded this, and sent it with its extract.",
}


@dataclass(frozen=True)
class Sent:
    """One package from one practice that held rows about the person."""

    practice: str
    package_id: str
    kind: str  # historic or incremental
    extracted_at: datetime
    rows: int  # of this person's, as loaded


@dataclass(frozen=True)
class Moment:
    """One line of the timeline."""

    at: datetime
    kind: str  # collected, opt-out, erased, used
    title: str
    detail: str
    link: str | None = None
    link_text: str | None = None


@dataclass
class Timeline:
    sent: list[Sent]  # what the lake holds about the person, by package
    erasures: list[dict[str, Any]]  # their deletion receipts, oldest first
    uses: RecordUses
    moments: list[Moment] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return bool(self.sent)

    @property
    def used(self) -> bool:
        return bool(self.uses.projects)

    @property
    def summary(self) -> str:
        """The one sentence that answers "what do you have about me, and who used it"."""
        practices = sorted({s.practice for s in self.sent})
        if self.held:
            where = f"{len(practices)} GP practice{'s' if len(practices) != 1 else ''}"
            used = (
                f"{len(self.uses.projects)} approved project"
                f"{'s' if len(self.uses.projects) != 1 else ''} used it"
                if self.used
                else "no approved project has used it"
            )
            return f"We hold your GP record, as sent by {where}; {used}."
        if self.erasures:
            last = self.erasures[-1]
            return (
                f"We hold nothing about you now: what we held was erased on "
                f"{last['erased_at']:%d %B %Y} (receipt {last['receipt']})."
            )
        return (
            "We hold nothing about you: no GP practice has sent a record for you, so there is "
            "nothing of yours for anyone to use."
        )


def sent_to_lake(engine: sa.Engine, pseudonym: str) -> list[Sent]:
    """The packages that brought rows about `pseudonym` into the lake, oldest first, from the
    collections index (erasure deletes a person's rows there with theirs in the lake)."""
    with Session(engine) as session:
        return [
            Sent(c.practice, c.package_id, c.kind, as_utc(c.extracted_at), c.rows)
            for c in collected_about(session, pseudonym)
        ]


def erasures_of(engine: sa.Engine, pseudonym: str) -> list[dict[str, Any]]:
    """The person's deletion receipts (found by their pseudonym's hash, as the log knows them)."""
    with Session(engine) as session:
        found = session.scalars(
            sa.select(DeletionReceipt)
            .where(DeletionReceipt.pseudonym_hash == pseudonym_hash(pseudonym))
            .order_by(DeletionReceipt.id)
        ).all()
        return [
            {
                "receipt": r.id,
                "erased_at": as_utc(r.erased_at),
                "rows_removed": r.rows_removed,
                "tables": dict(r.tables),
                "lake_version": r.lake_version,
            }
            for r in found
        ]


# Moments shown on one page of the timeline, newest first; older ones are a link away.
PAGE = 50


def timeline(
    engine: sa.Engine, pseudonym: str, uses: RecordUses, questions: dict[str, str]
) -> Timeline:
    """The whole timeline, newest first. `questions`: each definition's SHA-256 to the question
    it asks, in words, where known."""
    made = Timeline(sent_to_lake(engine, pseudonym), erasures_of(engine, pseudonym), uses)
    made.moments = moments_of(made, questions)
    return made


def moments_of(made: Timeline, questions: dict[str, str]) -> list[Moment]:
    """Every moment of the timeline, newest first. A practice that sends a package a day would
    fill a page a week, so its packages are one moment a month (each still counted)."""
    moments = collected(made.sent)
    for kind, state in made.uses.opt_outs.items():
        for change in state.get("history", []):
            action = "set" if change["action"] == "set" else "withdrawn"
            moments.append(
                Moment(
                    as_utc(change["effective_at"]),
                    "opt-out",
                    f"{NAMES[kind]} {action}",
                    SOURCE_WORDS.get(change["source"], f"Recorded ({change['source']})."),
                )
            )
    for receipt in made.erasures:
        tables = ", ".join(f"{n:,} from {t}" for t, n in sorted(receipt["tables"].items()) if n)
        moments.append(
            Moment(
                receipt["erased_at"],
                "erased",
                f"Your record was erased: receipt {receipt['receipt']}",
                f"{receipt['rows_removed']:,} entries removed ({tables or 'none were held'}) "
                f"in lake version {receipt['lake_version']}, and every older copy deleted from "
                "disk. What was erased, which practices had sent it and which research runs "
                "read it went with it: this receipt is all the service keeps. It is in the "
                "public log as an erasure entry.",
                "/log?type=erasure",
                "Erasures in the public log",
            )
        )
    for project in made.uses.projects:
        for run in project.runs:
            asked = questions.get(run.definition_sha256)
            moments.append(
                Moment(
                    datetime.combine(run.ran_on, datetime.min.time(), tzinfo=UTC),
                    "used",
                    f"Used by an approved project: {project.title}",
                    f"Run {run.reference} under agreement {project.agreement} read your record"
                    + (f". The question it asked: {asked}" if asked else "."),
                    f"/register?q={project.agreement}#{project.agreement}",
                    f"{project.agreement} in the Data Uses Register",
                )
            )
    return sorted(moments, key=lambda m: m.at, reverse=True)


def collected(sent: list[Sent]) -> list[Moment]:
    """The packages that held the person's rows: one moment per practice and month (dated by
    the month's last package), saying how many extracts and entries it covers."""
    months: dict[tuple[str, str], list[Sent]] = {}
    for one in sent:
        months.setdefault((one.practice, f"{one.extracted_at:%Y-%m}"), []).append(one)
    moments = []
    for (practice, _), packages in months.items():
        rows = sum(p.rows for p in packages)
        entries = f"{rows:,} entr{'y' if rows == 1 else 'ies'} about you"
        kinds = sorted({p.kind for p in packages})
        if len(packages) == 1:
            detail = f"In its {kinds[0]} extract: {entries}"
        else:
            first, last = packages[0].extracted_at, packages[-1].extracted_at
            detail = (
                f"In {len(packages)} {' and '.join(kinds)} extracts from {first:%d %B} to "
                f"{last:%d %B %Y}: {entries} in all"
            )
        moments.append(
            Moment(
                packages[-1].extracted_at,
                "collected",
                f"Practice {practice} sent data about you",
                f"{detail}, pseudonymised before it left the practice.",
            )
        )
    return moments


@dataclass(frozen=True)
class Page:
    moments: list[Moment]
    number: int  # from 1
    pages: int
    first: int  # the position of the page's first moment, from 1
    total: int


def page_of(moments: list[Moment], number: int) -> Page:
    """One page of PAGE moments (a number past the last gives the last page)."""
    pages = max(1, -(-len(moments) // PAGE))
    number = min(max(1, number), pages)
    start = (number - 1) * PAGE
    return Page(moments[start : start + PAGE], number, pages, start + 1, len(moments))
