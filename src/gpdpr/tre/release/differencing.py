"""Differencing: two numbers that count the same people, a few apart, give those few away.

A published 8 beside a later, suppressed 7 for the same group says that one person left it;
midpoint6's 0 beside its 3 says that somebody is there. So before a number is shown to someone
or released, it is compared with every number that counts the same thing (`Cell.key`, from
`query.canonical`: what is counted, never how it was named) and that was

- released by anyone, under any project: what is public is known to everyone; or
- shown to this person, or to anyone of their organisation, inside the environment or by a
  release, under any of their projects and agreements.

Two cells with one key whose raw counts are 1 to THRESHOLD apart are refused when either of them
published a number. Equal counts reveal nobody and are never refused; nor is a pair of which
neither published anything.

A refusal (`DifferencingRisk`) says that a risk was found and names the files it concerns:
never a cell, a group, a row or a number, each of which would tell the person what the check
found. The cells are looked up by key in batches (a five-year monthly measure by practice has
hundreds of thousands of them), so the cost grows with the cells asked about, not with
everything ever seen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.models import Person
from gpdpr.tre.models import SeenCell
from gpdpr.tre.release.disclosure import THRESHOLD, Cell

BATCH = 5_000  # keys per query: well within SQLite's and PostgreSQL's limits on parameters


class DifferencingRisk(NotAllowed):
    """Numbers that could be subtracted from numbers already seen to reveal a few people."""

    def __init__(self, files: Iterable[str]) -> None:
        self.files = tuple(sorted(set(files)))
        super().__init__(
            f"a differencing risk was found in {', '.join(self.files)}: set beside numbers "
            "already released, or shown to you or your organisation, they could reveal a small "
            "number of people, so they are withheld. Change the definition so that these "
            "numbers no longer count nearly the same people as earlier ones (coarser groups, "
            "longer intervals), or leave these files out."
        )


Seen = tuple[int, bool]  # (raw, published) of a cell seen before


def risky(new: Sequence[Cell], seen: dict[str, set[Seen]]) -> set[str]:
    """The files of `new` with a cell that differences another new cell or a cell in `seen`
    (by key). Pure: the database lookup is `check`'s."""
    by_key: dict[str, list[Cell]] = defaultdict(list)
    for cell in new:
        by_key[cell.key].append(cell)
    files: set[str] = set()
    for key, cells in by_key.items():
        others = seen.get(key, set())
        if len(cells) == 1 and not others:
            continue  # the common case, kept cheap
        alike = others | {(c.raw, c.released) for c in cells}
        for cell in cells:
            if any(_differs(cell.raw, cell.released, raw, published) for raw, published in alike):
                files.add(cell.file)
    return files


def _differs(raw: int, published: bool, other_raw: int, other_published: bool) -> bool:
    return 0 < abs(raw - other_raw) <= THRESHOLD and (published or other_published)


def check(session: Session, person_id: int, cells: Sequence[Cell]) -> None:
    """Refuse (DifferencingRisk, naming only files) if any of `cells` differences another of
    them, a cell anyone released, or a cell shown to `person_id` or anyone of their
    organisation."""
    found = risky(cells, _seen(session, person_id, {c.key for c in cells}))
    if found:
        raise DifferencingRisk(found)


def _seen(session: Session, person_id: int, keys: set[str]) -> dict[str, set[Seen]]:
    """The cells with these keys that anyone released or that `person_id`'s circle was shown."""
    person = session.get(Person, person_id)
    if person is None:
        raise UserError(f"no person {person_id}: differencing is checked for a known person")
    circle: sa.ColumnElement[bool] = SeenCell.person_id == person_id
    if person.organisation_id is not None:
        colleagues = sa.select(Person.id).where(Person.organisation_id == person.organisation_id)
        circle = sa.or_(circle, SeenCell.person_id.in_(colleagues))
    visible = sa.or_(SeenCell.released, circle)
    seen: dict[str, set[Seen]] = defaultdict(set)
    ordered = sorted(keys)
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start : start + BATCH]
        rows = session.execute(
            sa.select(SeenCell.key, SeenCell.raw, SeenCell.published)
            .where(SeenCell.key.in_(batch), visible)
            .distinct()
        )
        for key, raw, published in rows:
            seen[key].add((raw, published))
    return seen


def remember(
    session: Session, person_id: int, run_id: int, cells: Sequence[Cell], released: bool
) -> None:
    """Keep `cells` of run `run_id` as seen by `person_id`: shown inside the environment
    (`released` false) or released by them (true). A cell already kept for this person, run and
    kind of seeing is not kept twice (a run's page is shown many times)."""
    kept: set[tuple[str, int, bool]] = {
        (key, raw, published)
        for key, raw, published in session.execute(
            sa.select(SeenCell.key, SeenCell.raw, SeenCell.published).where(
                SeenCell.person_id == person_id,
                SeenCell.run_id == run_id,
                SeenCell.released == released,
            )
        )
    }
    rows = []
    for cell in cells:
        seen = (cell.key, cell.raw, cell.released)
        if seen in kept:
            continue
        kept.add(seen)
        rows.append(
            {
                "key": cell.key,
                "person_id": person_id,
                "run_id": run_id,
                "file": cell.file,
                "raw": cell.raw,
                "published": cell.released,
                "released": released,
            }
        )
    for start in range(0, len(rows), BATCH):
        session.execute(sa.insert(SeenCell), rows[start : start + BATCH])
