"""Loading verified packages into the lake: one lake version for the whole batch.

For each practice and table, the batch's rows are merged with what the lake holds:
  - a key (record id, patient or staff pseudonym) keeps only its newest copy, newest meaning the
    later extract, so a package that arrives late never undoes a newer one;
  - a deletion removes every copy of its key extracted no later than the deletion, and is kept as
    a tombstone, so a record deleted before its older copy arrives stays deleted;
  - a historic extract is the practice's whole record as it then stood: every row extracted
    before the practice's latest historic extract is superseded by it (replaced by its copy, or
    gone because the practice no longer holds or no longer sends it);
  - rows of a person with an active Type 1 opt-out are dropped (their practice may not have
    recorded the dissent yet: it may have been made online).
Files that hold a replaced or deleted copy are rewritten without it; everything else is only
added, so loading a new practice's historic extract is a straight copy into lake files.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.verify import Package
from gpdpr.lake.store import Lake, LakeVersion, LiveFile, Snapshot, Transaction
from gpdpr.lake.tables import (
    EXTRACTED_AT,
    INSTANT,
    LEDGER,
    LEDGER_SCHEMA,
    PACKAGE_ID,
    PRACTICE,
    TOMBSTONE_SCHEMA,
    TOMBSTONES,
    LakeTable,
)

Progress = Callable[[str, int], None]

# A practice's file of a table this small takes the new rows of a load (written again with
# them), rather than a new file being added beside it.
TAIL_BYTES = 1 << 20


@dataclass
class Loaded:
    """What became of one package."""

    package_id: str
    practice: str
    kind: str
    rows: Counter[str] = field(default_factory=Counter)  # rows added, by table
    type1_dropped: int = 0
    # Its Type 1 statements not heard, by reason (gpdpr.collect.authority.IGNORED_REASONS).
    type1_ignored: dict[str, int] = field(default_factory=dict)
    replaced: int = 0  # older copies in the lake that this package's rows replaced
    deleted: int = 0  # rows in the lake its deletions removed
    stale: int = 0  # its rows already superseded by a newer extract, so not loaded
    already_in: int | None = None  # the lake version it was loaded in before
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str, n: int, table: str = "") -> None:
        """Add to a tally; tables of one package are merged side by side, so under a lock."""
        if not n:
            return
        with self._guard:
            if what == "rows":
                self.rows[table] += n
            else:
                setattr(self, what, getattr(self, what) + n)

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> dict[str, Any]:
        return {
            "package_id": self.package_id,
            "practice": self.practice,
            "kind": self.kind,
            "rows": dict(sorted(self.rows.items())),
            "type1_dropped": self.type1_dropped,
            "type1_ignored": dict(sorted(self.type1_ignored.items())),
            "replaced": self.replaced,
            "deleted": self.deleted,
            "stale": self.stale,
        }


def load(
    lake: Lake,
    packages: list[Package],
    opted_out: set[str],
    workers: int = 4,
    on_progress: Progress | None = None,
    record: Callable[[], object] | None = None,
    type1_ignored: dict[str, dict[str, int]] | None = None,
) -> tuple[LakeVersion | None, list[Loaded]]:
    """Load the packages in one lake version (None when every one was already loaded).
    `record` makes the public record of every load committed and not yet recorded; it is called
    with the lake's lock held, before loading (for a run killed after its commit) and after.
    `type1_ignored`: by package id, its Type 1 statements the registry did not hear, by reason
    (kept in the load's record)."""
    with lake.writing() as tx:
        if record is not None:
            record()
        snapshot = tx.snapshot
        loaded_in, historic = _ledger(snapshot)
        fresh, reports = _sort_out(packages, loaded_in, tx.base.number + 1)
        for report in reports:
            report.type1_ignored = dict((type1_ignored or {}).get(report.package_id, {}))
        if not fresh:
            return None, reports
        batch = Batch(
            tx,
            pa.array(sorted(opted_out), pa.string()),
            {r.package_id: r for r in reports if r.already_in is None},
            {p.package_id: p.deletions() for p in fresh},
        )
        by_practice: dict[str, list[Package]] = {}
        for package in sorted(fresh, key=lambda p: (p.until, p.manifest["created_at"])):
            by_practice.setdefault(package.practice, []).append(package)
        sent_whole = _latest_historic(fresh)
        for practice, at in sent_whole.items():
            historic[practice] = max(at, historic.get(practice, at))
        tombstones = _tombstones(snapshot, set(by_practice))
        files = {name: _files_by_practice(snapshot, name) for name in lake.data}

        def run(job: tuple[LakeTable, str, list[Package]]) -> None:
            table, practice, group = job
            merge = Merge(
                batch, table, practice, group, historic.get(practice), sent_whole.get(practice)
            )
            merge.run(files[table.name].get(practice, []), tombstones.get((practice, table.name)))
            if on_progress is not None:
                rows = sum(batch.outcome[p.package_id].rows[table.name] for p in group)
                on_progress(table.name, rows)

        jobs = [
            (table, practice, group)
            for practice, group in by_practice.items()
            for table in lake.data.values()
        ]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(run, jobs))
        _write_tombstones(tx, by_practice, batch.deletions)
        _write_ledger(tx, fresh, batch.outcome, tx.base.number + 1)
        details = {"packages": [batch.outcome[p.package_id].summary() for p in fresh]}
        version = tx.commit("load", details)
        if record is not None:
            record()
    return version, reports


def _sort_out(
    packages: list[Package], loaded_in: dict[str, int], next_version: int
) -> tuple[list[Package], list[Loaded]]:
    """The packages still to load, and a report for every package given, in order (one given
    twice in a batch is loaded once, in the version this load makes)."""
    fresh: list[Package] = []
    reports: list[Loaded] = []
    seen: set[str] = set()
    for package in packages:
        report = Loaded(package.package_id, package.practice, package.kind)
        if package.package_id in loaded_in or package.package_id in seen:
            report.already_in = loaded_in.get(package.package_id, next_version)
        else:
            fresh.append(package)
            seen.add(package.package_id)
        reports.append(report)
    return fresh, reports


def _latest_historic(packages: list[Package]) -> dict[str, datetime]:
    latest: dict[str, datetime] = {}
    for package in packages:
        if package.kind == "historic":
            latest[package.practice] = max(
                package.until, latest.get(package.practice, package.until)
            )
    return latest


@dataclass(frozen=True)
class Batch:
    """What every table of every practice in one load shares."""

    tx: Transaction
    opted: pa.Array  # pseudonyms with an active Type 1 opt-out
    outcome: dict[str, Loaded]  # by package id, the packages being loaded
    deletions: dict[str, pa.Table]  # by package id


class Merge:
    """One table of one practice: the batch's packages against the lake's files."""

    def __init__(
        self,
        batch: Batch,
        table: LakeTable,
        practice: str,
        packages: list[Package],
        snapshot_at: datetime | None,
        resent_at: datetime | None,
    ) -> None:
        """`snapshot_at`: the practice's latest historic extract, anything extracted before it is
        superseded. `resent_at`: the time of the historic extract in this batch, if any; every
        row the lake holds from then or before is replaced by it (even one extracted at the
        same moment by an earlier historic)."""
        self.tx = batch.tx
        self.opted = batch.opted
        self.outcome = batch.outcome
        self.package_deletions = batch.deletions
        self.table = table
        self.practice = practice
        self.packages = packages
        self.snapshot_at = None if snapshot_at is None else pa.scalar(snapshot_at, INSTANT)
        self.resent_at = None if resent_at is None else pa.scalar(resent_at, INSTANT)

    def run(self, existing: list[LiveFile], tombstones: pa.Table | None) -> None:
        incoming = [self._incoming(p) for p in self.packages]
        incoming = [self._not_superseded(p, rows) for p, rows in incoming]
        incoming = self._newest_in_batch(incoming)
        deletions = self._deletions(tombstones)
        if deletions is not None:
            incoming = [self._not_deleted(p, rows, deletions) for p, rows in incoming]
        kept: list[pa.Table] = []  # what is left of the lake files rewritten
        if existing:
            incoming = self._against_lake(incoming, existing, deletions, kept)
        for package, rows in incoming:
            self.outcome[package.package_id].count("rows", rows.num_rows, self.table.name)
        fresh = [rows for _, rows in incoming if rows.num_rows]
        if fresh and not kept:
            tail = min(existing, key=lambda f: f.size, default=None)
            if tail is not None and tail.size <= TAIL_BYTES:
                kept.append(self._rewrite(tail, np.zeros(tail.rows, bool)))
        if kept:
            # New rows go into the file being rewritten anyway (a correction's, a deletion's)
            # or else into the practice's smallest file, if small: daily packages then add no
            # file, and a practice's files of a table stay few without waiting for compaction.
            self.tx.write(self.table.name, self.practice, _together([*kept, *fresh]))
        else:
            for rows in fresh:
                self.tx.write(self.table.name, self.practice, rows)

    def _incoming(self, package: Package) -> tuple[Package, pa.Table]:
        rows = package.read(self.table)
        n = rows.num_rows
        rows = rows.append_column(PACKAGE_ID, _constant_text(package.package_id, n))
        rows = rows.append_column(EXTRACTED_AT, pa.repeat(pa.scalar(package.until, INSTANT), n))
        rows = _lake_types(rows)
        patient = self.table.patient
        if patient is not None and len(self.opted) and n:
            opted_out = member(rows[patient], self.opted)
            dropped = _true(opted_out)
            if dropped:
                self.outcome[package.package_id].count("type1_dropped", dropped)
                rows = rows.filter(pc.invert(opted_out))
        return package, rows

    def _not_superseded(self, package: Package, rows: pa.Table) -> tuple[Package, pa.Table]:
        """Drop an older package's rows when a later historic extract has been taken."""
        if self.snapshot_at is None or rows.num_rows == 0:
            return package, rows
        old = pc.less(rows[EXTRACTED_AT], self.snapshot_at)
        stale = _true(old)
        if stale:
            self.outcome[package.package_id].count("stale", stale)
            rows = rows.filter(pc.invert(old))
        return package, rows

    def _newest_in_batch(
        self, incoming: list[tuple[Package, pa.Table]]
    ) -> list[tuple[Package, pa.Table]]:
        """Of several packages from one practice in a batch (oldest first), each key keeps the
        copy from the latest."""
        key = self.table.key
        result = []
        for i, (package, rows) in enumerate(incoming):
            later = [r[key] for _, r in incoming[i + 1 :] if r.num_rows]
            if later and rows.num_rows:
                superseded = member(rows[key], pa.chunked_array(later).combine_chunks())
                self.outcome[package.package_id].count("stale", _true(superseded))
                rows = rows.filter(pc.invert(superseded))
            result.append((package, rows))
        return result

    def _deletions(self, tombstones: pa.Table | None) -> pa.Table | None:
        """(key, deleted_at) for this table: the batch's deletions and earlier tombstones, the
        latest deletion of each key."""
        parts = []
        for package in self.packages:
            d = self.package_deletions[package.package_id]
            d = d.filter(pc.equal(d["table"], self.table.name))
            if d.num_rows:
                at = pa.repeat(pa.scalar(package.until, INSTANT), d.num_rows)
                parts.append(pa.table({"key": d["record_id"], "deleted_at": at}))
        if tombstones is not None and tombstones.num_rows:
            parts.append(tombstones.select(["key", "deleted_at"]))
        if not parts:
            return None
        both = pa.concat_tables(parts)
        return (
            both.group_by("key")
            .aggregate([("deleted_at", "max")])
            .rename_columns(["key", "deleted_at"])
        )

    def _not_deleted(
        self, package: Package, rows: pa.Table, deletions: pa.Table
    ) -> tuple[Package, pa.Table]:
        gone = _deleted(rows[self.table.key], rows[EXTRACTED_AT], deletions)
        if gone is not None:
            self.outcome[package.package_id].count("stale", _true(gone))
            rows = rows.filter(pc.invert(gone))
        return package, rows

    def _against_lake(
        self,
        incoming: list[tuple[Package, pa.Table]],
        existing: list[LiveFile],
        deletions: pa.Table | None,
        kept: list[pa.Table],
    ) -> list[tuple[Package, pa.Table]]:
        """Retire the lake files holding copies this batch replaces or deletes, adding what is
        left of them to `kept`; drop incoming rows the lake already holds a newer copy of."""
        key = self.table.key
        parts = [rows.select([key, EXTRACTED_AT]) for _, rows in incoming if rows.num_rows]
        new = pa.concat_tables(parts).combine_chunks() if parts else None
        stale_keys: list[pa.Array] = []
        for file in existing:
            held = self.tx.snapshot.read_file(self.table.name, file, [key, EXTRACTED_AT])
            remove = np.zeros(held.num_rows, bool)
            replaced = 0
            if new is not None:
                where = pc.index_in(held[key], value_set=new[key])
                found = pc.is_valid(where).to_numpy(zero_copy_only=False)
                if found.any():
                    newer_at = pc.take(new[EXTRACTED_AT], where)
                    newer = pc.fill_null(pc.greater_equal(newer_at, held[EXTRACTED_AT]), False)
                    newer_np = newer.to_numpy(zero_copy_only=False)
                    replaced = int((found & newer_np).sum())
                    remove |= found & newer_np
                    older = found & ~newer_np
                    if older.any():
                        stale_keys.append(held[key].filter(pa.array(older)).combine_chunks())
            if self.resent_at is not None:
                superseded = pc.less_equal(held[EXTRACTED_AT], self.resent_at)
                superseded_np = superseded.to_numpy(zero_copy_only=False) & ~remove
                replaced += int(superseded_np.sum())
                remove |= superseded_np
            deleted = 0
            if deletions is not None:
                gone = _deleted(held[key], held[EXTRACTED_AT], deletions)
                if gone is not None:
                    gone_np = gone.to_numpy(zero_copy_only=False) & ~remove
                    deleted = int(gone_np.sum())
                    remove |= gone_np
            if remove.any():
                kept.append(self._rewrite(file, remove))
                self._credit(replaced, deleted)
        if stale_keys:
            stale = pa.chunked_array(stale_keys).combine_chunks()
            kept = []
            for package, rows in incoming:
                old = member(rows[key], stale)
                self.outcome[package.package_id].count("stale", _true(old))
                kept.append((package, rows.filter(pc.invert(old))))
            incoming = kept
        return incoming

    def _rewrite(self, file: LiveFile, remove: np.ndarray[Any, np.dtype[np.bool_]]) -> pa.Table:
        """Retire a file; the rows of it that stay (written again by the caller)."""
        snapshot = self.tx.snapshot
        whole = snapshot.read_file(self.table.name, file, dictionary=self.table.repetitive)
        self.tx.retire(self.table.name, file)
        return _lake_types(whole.filter(pa.array(~remove)))

    def _credit(self, replaced: int, deleted: int) -> None:
        # Replacements are credited to the newest package of the batch: it carries the copy
        # that stays. Deletions likewise (a batch's deletions act together).
        latest = self.outcome[self.packages[-1].package_id]
        latest.count("replaced", replaced)
        latest.count("deleted", deleted)


def _together(parts: list[pa.Table]) -> pa.Table:
    """Rows of one table from lake files and packages, as one (the same columns, in the same
    order; text read as a dictionary in some and plain in others is made one type)."""
    schema = parts[0].schema
    return pa.concat_tables(
        [p.select(schema.names).cast(schema) if p.schema != schema else p for p in parts]
    )


def _true(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(mask).as_py() or 0)


def member(values: pa.Array | pa.ChunkedArray, value_set: pa.Array) -> pa.Array:
    """Which values are in the set, working on a dictionary's values when it has one (each
    distinct pseudonym looked up once, not once per record)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        inside = pc.is_in(values.dictionary, value_set=value_set)
        return pc.fill_null(pc.take(inside, values.indices), False)
    return pc.fill_null(pc.is_in(values, value_set=value_set), False)


def _deleted(
    keys: pa.ChunkedArray | pa.Array, extracted: pa.ChunkedArray | pa.Array, deletions: pa.Table
) -> pa.Array | None:
    where = pc.index_in(keys, value_set=deletions["key"])
    if pc.all(pc.is_null(where)).as_py():
        return None
    at = pc.take(deletions["deleted_at"], where)
    result = pc.fill_null(pc.greater_equal(at, extracted), False)
    return result.combine_chunks() if isinstance(result, pa.ChunkedArray) else result


def _constant_text(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _lake_types(rows: pa.Table) -> pa.Table:
    for i, f in enumerate(rows.schema):
        if pa.types.is_timestamp(f.type) and f.type != INSTANT:
            rows = rows.set_column(i, f.name, pc.cast(rows[f.name], INSTANT))
    return rows


def _ledger(snapshot: Snapshot) -> tuple[dict[str, int], dict[str, datetime]]:
    """The lake version each package was loaded in, and each practice's latest historic
    extract."""
    ledger = snapshot.read(LEDGER, [PACKAGE_ID, PRACTICE, "kind", EXTRACTED_AT, "lake_version"])
    loaded = dict(
        zip(ledger[PACKAGE_ID].to_pylist(), ledger["lake_version"].to_pylist(), strict=True)
    )
    historic: dict[str, datetime] = {}
    for practice, kind, at in zip(
        ledger[PRACTICE].to_pylist(),
        ledger["kind"].to_pylist(),
        ledger[EXTRACTED_AT].to_pylist(),
        strict=True,
    ):
        if kind == "historic" and (practice not in historic or at > historic[practice]):
            historic[practice] = at
    return loaded, historic


def _files_by_practice(snapshot: Snapshot, table: str) -> dict[str, list[LiveFile]]:
    grouped: dict[str, list[LiveFile]] = {}
    for file in snapshot.files(table):
        grouped.setdefault(str(file.practice), []).append(file)
    return grouped


def _tombstones(snapshot: Snapshot, practices: set[str]) -> dict[tuple[str, str], pa.Table]:
    found: dict[tuple[str, str], pa.Table] = {}
    for file in snapshot.files(TOMBSTONES):
        if file.practice not in practices:
            continue
        rows = snapshot.read_file(TOMBSTONES, file)
        for table in set(rows["table"].to_pylist()):
            part = rows.filter(pc.equal(rows["table"], table))
            key = (str(file.practice), str(table))
            found[key] = pa.concat_tables([found[key], part]) if key in found else part
    return found


def _write_tombstones(
    tx: Transaction, by_practice: dict[str, list[Package]], deletions: dict[str, pa.Table]
) -> None:
    for practice, group in by_practice.items():
        for package in group:
            d = deletions[package.package_id]
            if d.num_rows == 0:
                continue
            n = d.num_rows
            rows = pa.table(
                {
                    "table": d["table"],
                    "key": d["record_id"],
                    "deleted_at": pa.repeat(pa.scalar(package.until, INSTANT), n),
                    PACKAGE_ID: pa.repeat(package.package_id, n),
                },
                schema=pa.schema([f for f in TOMBSTONE_SCHEMA if f.name != PRACTICE]),
            )
            tx.write(TOMBSTONES, practice, rows)


def _write_ledger(
    tx: Transaction, fresh: list[Package], outcome: dict[str, Loaded], number: int
) -> None:
    rows = pa.table(
        {
            PACKAGE_ID: [p.package_id for p in fresh],
            PRACTICE: [p.practice for p in fresh],
            "kind": [p.kind for p in fresh],
            "since": pa.array([p.since for p in fresh], INSTANT),
            EXTRACTED_AT: pa.array([p.until for p in fresh], INSTANT),
            "specification_version": [p.spec_version for p in fresh],
            "rows": [outcome[p.package_id].total for p in fresh],
            "lake_version": [number] * len(fresh),
        },
        schema=LEDGER_SCHEMA,
    )
    tx.write(LEDGER, None, rows)
