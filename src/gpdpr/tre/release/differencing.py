"""Differencing: two numbers that count the same people, a few apart, give those few away.

A published 8 beside a later, suppressed 7 for the same group says that one person left it;
midpoint6's 0 beside its 3 says that somebody is there. So before a number is shown to someone
or released, it is compared with every number that counts the same thing (`Cell.key`, from
`query.canonical`: what is counted, never how it was named) and that was

- released by anyone, under any project: what is public is known to everyone; or
- shown to this person, or to anyone of their organisation, inside the environment or by a
  release, under any of their projects and agreements.

Two cells with one key whose raw counts are 1 to THRESHOLD apart are refused when either of them
published a number; so are two cells of which one counts what is one step from what the other
counts (`Cell.near`: `x & ~target` beside `x`), kept as rows keyed `near_key(key)`. Equal
counts reveal nobody and are never refused; nor is a pair of which
neither published anything.

A refusal (`DifferencingRisk`) says that a risk was found and names the files it concerns:
never a cell, a group, a row or a number, each of which would tell the person what the check
found. The cells are looked up by key in batches (a five-year monthly measure by practice has
hundreds of thousands of them), so the cost grows with the cells asked about, not with
everything ever seen.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
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

# The comparison, done by the database for one batch of asked cells: each asked cell (key, raw,
# published) against the cells seen with its key, returning only the offending asked cells. Only
# constant text and placeholders: every value is a bound parameter.
_OFFENDING = """
WITH asked (key, raw, published) AS (VALUES {rows})
SELECT DISTINCT asked.key, asked.raw FROM asked
JOIN tre_seen_cells seen ON seen.key = asked.key
WHERE seen.raw <> asked.raw AND abs(seen.raw - asked.raw) <= {threshold}
AND (asked.published OR seen.published)
AND ({p} OR seen.released OR seen.person_id = {p} OR seen.person_id IN
     (SELECT id FROM people WHERE organisation_id = {p}))
"""
_INSERT = (
    "INSERT INTO tre_seen_cells (key, raw, published, file, person_id, run_id, released) "
    "VALUES ({values})"
)
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": "?"}


def near_key(key: str) -> str:
    """The key under which a cell is kept for each of its near keys: a later cell whose own key
    that is finds it, and no cell's own key is ever one of these."""
    return hashlib.sha256(b"near:" + key.encode()).hexdigest()


def asked(cells: Sequence[Cell]) -> list[tuple[str, int, bool, Cell]]:
    """What to look up for each cell: its key; each near key (a cell seen with that key counts
    one step from this one); and its key as a near key (a cell seen one step from this one)."""
    out = []
    for cell in cells:
        out.append((cell.key, cell.raw, cell.released, cell))
        out.append((near_key(cell.key), cell.raw, cell.released, cell))
        out += [(key, cell.raw, cell.released, cell) for key in cell.near]
    return out


def kept_rows(cells: Sequence[Cell]) -> list[tuple[str, int, bool, Cell]]:
    """The rows a cell is kept as: its key, and each of its near keys as `near_key`."""
    out = []
    for cell in cells:
        out.append((cell.key, cell.raw, cell.released, cell))
        out += [(near_key(key), cell.raw, cell.released, cell) for key in cell.near]
    return out


def risky(new: Sequence[Cell], seen: dict[str, set[Seen]]) -> set[str]:
    """The files of `new` with a cell that differences another new cell or a cell in `seen`
    (by key). The rule itself, without a database: `check` asks the database the same."""
    files = _risky_exact(new, seen)
    exact: dict[str, list[Cell]] = defaultdict(list)
    for cell in new:
        exact[cell.key].append(cell)
    for cell in new:  # one step apart, within the new cells
        for key in cell.near:
            for other in exact.get(key, ()):
                if _differs(cell.raw, cell.released, other.raw, other.released):
                    files |= {cell.file, other.file}
    return files


def _risky_exact(new: Sequence[Cell], seen: dict[str, set[Seen]]) -> set[str]:
    repeated = {key for key, count in Counter(c.key for c in new).items() if count > 1}
    by_key: dict[str, list[Cell]] = defaultdict(list)
    for cell in new:
        if cell.key in repeated or cell.key in seen:  # a key seen once only reveals nobody
            by_key[cell.key].append(cell)
    files: set[str] = set()
    for key, cells in by_key.items():
        alike = seen.get(key, set()) | {(c.raw, c.released) for c in cells}
        if len({raw for raw, _ in alike}) == 1:
            continue  # the same count however often it was seen reveals nobody
        for cell in cells:
            if any(_differs(cell.raw, cell.released, raw, published) for raw, published in alike):
                files.add(cell.file)
    return files


def _differs(raw: int, published: bool, other_raw: int, other_published: bool) -> bool:
    return 0 < abs(raw - other_raw) <= THRESHOLD and (published or other_published)


def check(
    session: Session, person_id: int, cells: Sequence[Cell], for_release: bool = False
) -> None:
    """Refuse (DifferencingRisk, naming only files) if any of `cells` differences another of
    them, a cell anyone released, or a cell shown to `person_id` or anyone of their
    organisation. `for_release`: the cells are to be published, so everyone will see them:
    compared with every cell shown to anyone too (another organisation that saw 101 inside
    would learn one person from a released 100)."""
    person = session.get(Person, person_id)
    if person is None:
        raise UserError(f"no person {person_id}: differencing is checked for a known person")
    found = risky(cells, {})  # against each other
    found |= _offending(session, person, cells, for_release)
    if found:
        raise DifferencingRisk(found)


def _offending(session: Session, person: Person, cells: Sequence[Cell], everyone: bool) -> set[str]:
    """The files of the cells that difference a cell anyone released or that `person`'s circle
    (with `everyone`, anyone) was shown, asked of the database a batch at a time."""
    connection = session.connection()
    mark = _PLACEHOLDER[connection.dialect.paramstyle]
    files_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    for key, raw, _, cell in asked(cells):
        files_of[(key, raw)].add(cell.file)
    asking = sorted({(key, raw, published) for key, raw, published, _ in asked(cells)})
    organisation = -1 if person.organisation_id is None else person.organisation_id
    found: set[str] = set()
    for start in range(0, len(asking), BATCH):
        batch = asking[start : start + BATCH]
        query = _OFFENDING.format(
            rows=", ".join([f"({mark}, {mark}, {mark})"] * len(batch)),
            threshold=THRESHOLD,
            p=mark,
        )
        values = [v for row in batch for v in row] + [everyone, person.id, organisation]
        for key, raw in connection.exec_driver_sql(query, tuple(values)).all():
            found |= files_of[(key, raw)]
    return found


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
    for key, raw, published, cell in kept_rows(cells):
        seen = (key, raw, published)
        if seen not in kept:
            kept.add(seen)
            rows.append((*seen, cell.file, person_id, run_id, released))
    rows.sort()  # in the order of the key's index: far fewer pages touched than at random
    connection = session.connection()
    # Through the driver: hundreds of thousands of rows, each checked by the table's types.
    insert = _INSERT.format(values=", ".join([_PLACEHOLDER[connection.dialect.paramstyle]] * 7))
    for start in range(0, len(rows), BATCH):
        connection.exec_driver_sql(insert, rows[start : start + BATCH])
