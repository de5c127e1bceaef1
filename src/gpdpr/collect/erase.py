"""Erasure: everyone with an active Type 1 opt-out, gone from the lake, physically.

One cycle finds every file of every table that holds a row of an opted-out person, rewrites it
without them and commits the lake version that no longer names the old files; then vacuums, so
the old files, and every older copy of anything, are deleted from disk. Only files that hold an
opted-out person are rewritten: erasing one person touches only the files of the practices they
were registered with.

What the cycle answers is in the lake version it commits: the "erase" version's details hold, for
each opt-out awaiting a receipt (by its event id, never the person), the rows removed per table.
Receipts are made from that committed record once the clean-up has finished (see
gpdpr.collect.service), so a cycle killed at any point is finished by the next one with the true
counts, not with the zeros a second pass over the already erased lake would find.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.load import member
from gpdpr.lake.store import Lake, LakeVersion, LiveFile, Transaction
from gpdpr.lake.tables import LakeTable

ANSWERS = "answers"  # in an erase version's details: opt-out event id -> rows per table


@dataclass
class Erasure:
    """What one cycle did."""

    version: LakeVersion | None  # the lake version without them (None: nothing to vacuum)
    by_person: dict[str, Counter[str]] = field(default_factory=dict)  # rows removed, by table
    files_rewritten: int = 0
    files_deleted: int = 0

    @property
    def rows_removed(self) -> int:
        return sum(sum(c.values()) for c in self.by_person.values())

    def by_table(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_person.values():
            total.update(counts)
        return total


def erase(lake: Lake, opted_out: set[str], awaiting: dict[str, int], workers: int = 4) -> Erasure:
    """Remove every row of the opted-out people and vacuum. `awaiting`: each person whose
    opt-out awaits a receipt, with that opt-out's event id; the cycle commits (and vacuums) even
    when nothing is left to remove, so that they are answered and no older copy survives."""
    result = Erasure(None)
    if not opted_out:
        return result
    value_set = pa.array(sorted(opted_out), pa.string())
    with lake.writing() as tx:
        jobs = [
            (table, file)
            for table in lake.data.values()
            if table.patient is not None
            for file in tx.snapshot.files(table.name)
        ]

        def run(job: tuple[LakeTable, LiveFile]) -> Counter[str] | None:
            return _erase_file(tx, job[0], job[1], value_set)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for (table, _), found in zip(jobs, pool.map(run, jobs), strict=True):
                if found is None:
                    continue
                result.files_rewritten += 1
                for person, n in found.items():
                    result.by_person.setdefault(person, Counter())[table.name] += n
        if not (tx.changed or awaiting):
            return result
        answers = {
            str(event_id): dict(sorted(result.by_person.get(person, Counter()).items()))
            for person, event_id in sorted(awaiting.items(), key=lambda a: a[1])
        }
        tx.commit(
            "erase",
            {
                "people": len(result.by_person),
                "rows_removed": result.rows_removed,
                "files_rewritten": result.files_rewritten,
                "rows_by_table": dict(sorted(result.by_table().items())),
                ANSWERS: answers,
            },
        )
        result.version, result.files_deleted = tx.vacuum()
    return result


def _erase_file(
    tx: Transaction, table: LakeTable, file: LiveFile, value_set: pa.Array
) -> Counter[str] | None:
    """Rewrite one file without the opted-out people; their row counts, or None if it held
    none of them."""
    column = str(table.patient)
    held = tx.snapshot.read_file(table.name, file, [column], dictionary=[column])
    hit = member(held[column], value_set)
    if not pc.any(hit).as_py():
        return None
    whole = tx.snapshot.read_file(table.name, file, dictionary=table.repetitive)
    tx.write(table.name, file.practice, whole.filter(pc.invert(hit)))
    tx.retire(table.name, file)
    removed = pc.value_counts(whole[column].filter(hit).cast(pa.string()))
    return Counter(
        dict(
            zip(
                removed.field("values").to_pylist(),
                removed.field("counts").to_pylist(),
                strict=True,
            )
        )
    )
