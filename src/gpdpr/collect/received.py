"""The per-person index of collections: which package brought rows about which person into the
lake, kept in the central database (`Collected`) so that a patient's timeline is one indexed
look-up, never a scan of the lake.

It is made from committed state, in the transaction that records the loads' `package.loaded`
events (gpdpr.collect.service), so the record and the index are made together or not at all,
and a run killed after its lake commit has both made by the next. What it counts is what the
lake holds of each package when it is recorded: normally the moment after the load; after a
kill, an erasure may have come in between, and the people it erased are then not counted.

The erasure cycle deletes the index's rows of everyone it erases, and of everyone not yet
receipted, once its lake version is committed and before it makes receipts, so what a killed
cycle left is deleted by the next. People are known here, as in the event record, by their
pseudonym's hash only.

Only the files a load can have written are read: a package's rows are in files of its own
practice written after the lake version before its load was committed (with an hour's margin
for a clock set back), so a daily load reads what it wrote, not the practice's history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import pseudonym_hash
from gpdpr.db.models import Collected, core, naive_utc
from gpdpr.lake.store import Lake, LakeVersion, LiveFile, Snapshot
from gpdpr.lake.tables import EXTRACTED_AT, LEDGER, PACKAGE_ID, PRACTICE

MARGIN = timedelta(hours=1)
BATCH = 5_000  # rows a statement


def index_loads(session: Session, lake: Lake, versions: list[LakeVersion]) -> int:
    """Add who each package of these load versions (oldest first) brought into the lake, as the
    latest lake version holds it; call under the lake's lock. The number of index rows added."""
    summaries: dict[str, tuple[dict[str, Any], int]] = {
        str(s["package_id"]): (s, version.number)
        for version in versions
        for s in version.details.get("packages", [])
    }
    if not summaries:
        return 0
    snapshot = lake.snapshot()
    practices = {str(s["practice"]) for s, _ in summaries.values()}
    since = _written_after(lake, versions[0].number)
    counts = _people(snapshot, set(summaries), practices, since)
    extracted = _extracted_at(snapshot, set(summaries))
    rows = [
        {
            "pseudonym_hash": pseudonym_hash(person),
            "package_id": package,
            "practice": str(summaries[package][0]["practice"]),
            "kind": str(summaries[package][0]["kind"]),
            "extracted_at": naive_utc(extracted[package]),
            "rows": n,
            "lake_version": summaries[package][1],
        }
        for (person, package), n in sorted(counts.items())
    ]
    for start in range(0, len(rows), BATCH):
        session.execute(sa.insert(core(Collected)), rows[start : start + BATCH])
    return len(rows)


def forget(session: Session, pseudonyms: Iterable[str]) -> int:
    """Delete every index row of these people; how many were deleted."""
    hashes = sorted({pseudonym_hash(p) for p in pseudonyms})
    deleted = 0
    for start in range(0, len(hashes), BATCH):
        done = session.execute(
            sa.delete(Collected).where(Collected.pseudonym_hash.in_(hashes[start : start + BATCH]))
        )
        deleted += int(getattr(done, "rowcount", 0) or 0)
    return deleted


def collected_about(session: Session, pseudonym: str) -> list[Collected]:
    """The index's rows about one person, oldest package first."""
    return list(
        session.scalars(
            sa.select(Collected)
            .where(Collected.pseudonym_hash == pseudonym_hash(pseudonym))
            .order_by(Collected.extracted_at, Collected.package_id)
        )
    )


def _written_after(lake: Lake, first: int) -> int:
    """In milliseconds since the epoch: no file of lake version `first` or later was written
    before this (the version before it was committed first; less the margin)."""
    before = lake.versions(first - 2)[0]
    at = datetime.fromisoformat(before.committed_at.replace("Z", "+00:00")) - MARGIN
    return int(at.timestamp() * 1000)


def _people(
    snapshot: Snapshot, packages: set[str], practices: set[str], since: int
) -> Counter[tuple[str, str]]:
    """Rows per (pseudonym, package id) of these packages, over every table that names a
    patient."""
    wanted = pa.array(sorted(packages), pa.string())
    counts: Counter[tuple[str, str]] = Counter()
    for name, table in snapshot.lake.data.items():
        if table.patient is None:
            continue
        actions = pa.table(snapshot.delta(name).get_add_actions(flatten=True))
        recent = pc.and_(
            pc.greater_equal(actions["modification_time"], since),
            pc.is_in(actions[f"partition.{PRACTICE}"], pa.array(sorted(practices))),
        )
        for path in actions.filter(recent)["path"].to_pylist():
            held = snapshot.read_file(name, LiveFile(path, 0, 0, None), [table.patient, PACKAGE_ID])
            held = held.filter(pc.is_in(held[PACKAGE_ID], wanted))
            if held.num_rows == 0:
                continue
            grouped = held.group_by([table.patient, PACKAGE_ID]).aggregate([([], "count_all")])
            for person, package, n in zip(
                grouped[table.patient].to_pylist(),
                grouped[PACKAGE_ID].to_pylist(),
                grouped["count_all"].to_pylist(),
                strict=True,
            ):
                if person is not None:
                    counts[(str(person), str(package))] += int(n)
    return counts


def _extracted_at(snapshot: Snapshot, packages: set[str]) -> dict[str, datetime]:
    ledger = (
        snapshot.delta(LEDGER)
        .to_pyarrow_dataset()
        .to_table(
            columns=[PACKAGE_ID, EXTRACTED_AT],
            filter=pc.field(PACKAGE_ID).isin(sorted(packages)),
        )
    )
    return dict(zip(ledger[PACKAGE_ID].to_pylist(), ledger[EXTRACTED_AT].to_pylist(), strict=True))


def rebuild(engine: sa.Engine, lake: Lake) -> int:
    """Make the index again from the whole lake as it stands, for a lake loaded before the index
    existed (or one restored from a backup); the number of rows written. Takes the lake's lock,
    so no load or erasure runs meanwhile."""
    with lake.writing(), Session(engine) as session, session.begin():
        session.execute(sa.delete(Collected))
        loads = [v for v in lake.versions() if v.operation == "load"]
        return index_loads(session, lake, loads) if loads else 0
