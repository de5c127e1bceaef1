"""The pseudonymised lake: Delta Lake tables under one folder, committed together.

    LAKE/
      _lake/versions/00000000000000000007.json   lake version 7: which version of each table
      _lake/lock                                  held by the one process writing
      patients/ registrations/ ... staff/         one Delta table per specification table,
                                                  partitioned by practice
      _packages/ _tombstones/                     bookkeeping (see tables.py)

A Delta commit is atomic for one table, but a package touches every table. So the lake has a
version of its own: a small file naming the Delta version of each table, created atomically (a
hard link, which fails rather than overwrite) only after every table has committed. Readers see
only what a lake version names. A writer that dies part-way leaves Delta versions that no lake
version names; the next writer restores each such table to the version the lake names before it
starts, so the lake is always exactly as before a load or exactly as after it.

Erasure's clean-up is written ahead: the version that declares older versions unreadable
(`readable_from`) is committed before a file is deleted, and `_lake/vacuumed` records the last
such version whose files are all gone. A writer that finds an erasure committed but not yet
vacuumed (killed between the two, or part-way through deleting) finishes it before anything else,
so a reader of an older version is told it is gone, never handed a missing file, and no copy of
an erased person outlives the next command that writes.

Nothing in the Delta logs names a person: file statistics are row counts only (a minimum or
maximum pseudonym would otherwise outlive the file it described) and no commit records a
predicate.
"""

from __future__ import annotations

import fcntl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.transaction import AddAction, RemoveAction

from gpdpr import durable
from gpdpr import spec as specification
from gpdpr.dictionaries import table_used_only
from gpdpr.errors import UserError
from gpdpr.lake.tables import (
    LEDGER,
    LEDGER_SCHEMA,
    PERSON,
    PRACTICE,
    TOMBSTONE_SCHEMA,
    TOMBSTONES,
    LakeTable,
    data_tables,
    file_name,
    with_person,
)

META = "_lake"
VERSIONS = "versions"
VACUUMED = "vacuumed"  # the last vacuum version whose files are all deleted
NO_STATS = {"delta.dataSkippingNumIndexedCols": "0"}
# A table is committed to three or four times a day (load, compaction, erasure) and opened many
# more: a checkpoint every 10 commits keeps each opening's log replay short (Delta's default, 100,
# had every opening late in a month replay a hundred commits).
CHECKPOINTS = {"delta.checkpointInterval": "10"}


@dataclass(frozen=True)
class LakeVersion:
    number: int
    committed_at: str
    operation: str
    tables: dict[str, int]  # Delta version of each table
    readable_from: int  # earlier lake versions lost files to an erasure
    details: dict[str, Any]


@dataclass(frozen=True)
class LiveFile:
    """A data file in a table's current state."""

    path: str
    size: int
    rows: int
    practice: str | None


class Lake:
    def __init__(self, folder: Path, tables: dict[str, LakeTable]) -> None:
        self.folder = folder
        self.data = tables
        self.schemas: dict[str, pa.Schema] = {n: t.schema for n, t in tables.items()}
        self.schemas[LEDGER] = LEDGER_SCHEMA
        self.schemas[TOMBSTONES] = TOMBSTONE_SCHEMA
        self._meta = folder / META

    @classmethod
    def open(cls, folder: Path, spec: specification.Specification | None = None) -> Lake:
        """The lake in `folder`, made (empty, at version 0) if there is none yet."""
        lake = cls(folder, data_tables(spec or specification.shipped()))
        if not lake._version_files():
            stray = folder.exists() and any(p.name != META for p in folder.iterdir())
            if stray and not (folder / META).exists():
                raise UserError(
                    f"{folder} holds files but is not a gpdpr lake: give an empty folder or an "
                    "existing lake"
                )
            with lake._locked():
                if not lake._version_files():
                    lake._create()
        return lake

    # ---- layout -------------------------------------------------------------------------------

    def path(self, table: str) -> Path:
        return self.folder / table

    def partition_by(self, table: str) -> list[str]:
        return [] if table == LEDGER else [PRACTICE]

    def _version_files(self) -> list[Path]:
        folder = self._meta / VERSIONS
        return sorted(folder.glob("*.json")) if folder.exists() else []

    def _create(self) -> None:
        (self._meta / VERSIONS).mkdir(parents=True, exist_ok=True)
        for name, schema in self.schemas.items():
            DeltaTable.create(
                str(self.path(name)),
                schema,
                mode="ignore",  # a table made by an earlier attempt that died is reused
                partition_by=self.partition_by(name) or None,
                name=name,
                configuration=NO_STATS | CHECKPOINTS,
            )
        durable.write_file(self._meta / VACUUMED, b"0\n")
        self._write_version(
            LakeVersion(0, _now(), "create", self._delta_versions(), 0, {}),
        )

    # ---- versions -----------------------------------------------------------------------------

    def latest(self) -> LakeVersion:
        files = self._version_files()
        if not files:
            raise UserError(f"{self.folder} is not a gpdpr lake (no {META}/{VERSIONS})")
        return _read_version(files[-1])

    def version(self, number: int | None = None) -> LakeVersion:
        latest = self.latest()
        if number is None:
            return latest
        if number > latest.number or number < 0:
            raise UserError(f"the lake has versions 0 to {latest.number}; there is no {number}")
        if number < latest.readable_from:
            raise UserError(
                f"lake version {number} can no longer be read: the erasure at version "
                f"{latest.readable_from} physically removed the files it named, because people "
                f"who opted out must be gone from every copy. Use version {latest.readable_from} "
                "or later"
            )
        return _read_version(self._meta / VERSIONS / _version_name(number))

    def snapshot(self, number: int | None = None) -> Snapshot:
        return Snapshot(self, self.version(number))

    def versions(self, after: int = -1) -> list[LakeVersion]:
        """Every version numbered above `after`, oldest first."""
        return [_read_version(path) for path in self._version_files() if int(path.stem) > after]

    def vacuumed(self) -> int | None:
        """The last vacuum version whose deleting finished (None: a lake made before this was
        recorded, whose clean-ups all count as finished)."""
        marker = self._meta / VACUUMED
        return int(marker.read_text()) if marker.exists() else None

    def cleaned_up(self, latest: LakeVersion) -> bool:
        """Whether every file older versions lost to an erasure is deleted. A lake made before
        the clean-up was recorded has no record: its clean-ups ran to the end or were lost."""
        done = self.vacuumed()
        return latest.operation != "erase" and (done is None or done >= latest.readable_from)

    def _write_version(self, version: LakeVersion) -> None:
        """Publish a lake version: written aside, flushed, then linked into place in one step."""
        body = orjson.dumps(
            {
                "version": version.number,
                "committed_at": version.committed_at,
                "operation": version.operation,
                "tables": version.tables,
                "readable_from": version.readable_from,
                "details": version.details,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
        durable.step(f"lake version {version.number} {version.operation}")
        durable.write_file(
            self._meta / VERSIONS / _version_name(version.number), body, replace=False
        )
        durable.step(f"lake version {version.number} committed")

    def _delta_versions(self, known: dict[str, int] | None = None) -> dict[str, int]:
        """Each table's latest Delta version. From `known` (versions held, the lock held since)
        by looking for the log files of the versions after them: Delta numbers its commits
        without gaps, and opening every table to ask costs a replay of its log each."""
        if known is None:
            return {name: DeltaTable(str(self.path(name))).version() for name in self.schemas}
        latest = {}
        for name in self.schemas:
            version = known[name]
            while (self.path(name) / "_delta_log" / f"{version + 1:020d}.json").exists():
                version += 1
            latest[name] = version
        return latest

    # ---- writing ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._meta.mkdir(parents=True, exist_ok=True)
        with (self._meta / "lock").open("a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"another gpdpr process is writing to the lake {self.folder}; wait for it to "
                    "finish and run this again"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        """The one writer: holds the lock, undoes what an earlier writer left uncommitted, and
        hands out a transaction. Nothing is visible until the transaction commits."""
        with self._locked():
            base = self.latest()
            self._recover(base)
            tx = Transaction(self, base)
            if not self.cleaned_up(base):
                tx.vacuum({"finishes": base.number})
            yield tx

    def _recover(self, base: LakeVersion) -> None:
        for leftover in self._meta.glob(".version-*.tmp"):
            leftover.unlink()
        for leftover in (self._meta / VERSIONS).glob(".*.partial"):
            leftover.unlink()
        for name, pinned in base.tables.items():
            # Delta versions are numbered without gaps, so a commit beyond the one the lake
            # names shows as the next one's file: looked for first, as opening every table
            # (replaying its log) at every write is most of a small write's time.
            if not (self.path(name) / "_delta_log" / f"{pinned + 1:020d}.json").exists():
                continue
            table = DeltaTable(str(self.path(name)))
            if table.version() > pinned:
                table.restore(pinned)

    def vacuum(self) -> int:
        """Physically delete every file the current version does not use, in every table (the
        files of older versions and anything a failed writer left). Returns the number deleted.
        Called with the lock held, by the transaction."""
        removed = 0
        for name in self.schemas:
            table = DeltaTable(str(self.path(name)))
            removed += len(
                table.vacuum(
                    retention_hours=0,
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                )
            )
        return removed


@dataclass
class Snapshot:
    """The lake as one version names it."""

    lake: Lake
    version: LakeVersion

    def delta(self, table: str) -> DeltaTable:
        return DeltaTable(str(self.lake.path(table)), version=self.version.tables[table])

    def files(self, table: str, delta: DeltaTable | None = None) -> list[LiveFile]:
        """The table's data files at this version (from `delta`, the table already open)."""
        actions = pa.table((delta or self.delta(table)).get_add_actions(flatten=True))
        practice = (
            actions.column(f"partition.{PRACTICE}").to_pylist()
            if f"partition.{PRACTICE}" in actions.column_names
            else [None] * actions.num_rows
        )
        return [
            LiveFile(path, size, rows, p)
            for path, size, rows, p in zip(
                actions.column("path").to_pylist(),
                actions.column("size_bytes").to_pylist(),
                actions.column("num_records").to_pylist(),
                practice,
                strict=True,
            )
        ]

    def dataset(self, table: str) -> ds.Dataset:
        """The table's files at this version as a dataset read by Arrow's own file system (a
        query engine reading it from many threads then never waits on Python), its partition
        column read from the files' folders."""
        root = self.lake.path(table)
        delta = self.delta(table)
        # The schema as deltalake's own dataset takes it, without making that dataset (a
        # fragment a file: 0.15 s a table at 10 million patients).
        schema = pa.schema(delta.schema().to_arrow())
        partitioned = PRACTICE in self.lake.partition_by(table)
        return ds.dataset(
            [str(root / f.path) for f in self.files(table, delta)],
            schema=schema,
            format="parquet",
            partitioning=(
                ds.partitioning(pa.schema([schema.field(PRACTICE)]), flavor="hive")
                if partitioned
                else None
            ),
            partition_base_dir=str(root),
        )

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        return self.delta(table).to_pyarrow_dataset().to_table(columns=columns)

    def read_file(
        self,
        table: str,
        file: LiveFile,
        columns: list[str] | None = None,
        dictionary: list[str] | None = None,
    ) -> pa.Table:
        """One data file as stored: without the practice, which is in its path, or the person's
        number, which is made again whenever rows are written (`Transaction.write`), so rows
        read from files of before it and after it are alike."""
        rows = read_parquet(self.lake.path(table) / file.path, columns, dictionary)
        return rows.drop_columns([PERSON]) if PERSON in rows.column_names else rows


@dataclass
class Transaction:
    """Files written into the lake's tables, and files retired from them, committed as one lake
    version. Writing is thread-safe, so tables and practices can be written side by side."""

    lake: Lake
    base: LakeVersion
    _adds: dict[str, list[AddAction]] = field(default_factory=dict)
    _removes: dict[str, list[RemoveAction]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot(self.lake, self.base)

    def write(self, table: str, practice: str | None, data: pa.Table) -> int:
        """Write rows (without the partition column) as a new file of `table`."""
        if data.num_rows == 0:
            return 0
        repetitive: list[str] | bool = True
        if table in self.lake.data:
            data = with_person(self.lake.data[table], data)
            repetitive = self.lake.data[table].repetitive
        relative = file_name(uuid.uuid4().hex, data.column_names)
        if practice is not None:
            relative = f"{PRACTICE}={practice}/{relative}"
        path = self.lake.path(table) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table_used_only(data),  # no trace of a row filtered out: see gpdpr.dictionaries
            path,
            compression="zstd",
            compression_level=1,
            use_dictionary=repetitive,
            write_statistics=False,  # a minimum or maximum pseudonym would name a person
            store_schema=False,
        )
        action = AddAction(
            relative,
            path.stat().st_size,
            {PRACTICE: practice} if practice is not None else {},
            int(time.time() * 1000),
            True,
            orjson.dumps({"numRecords": data.num_rows}).decode(),
        )
        with self._guard:
            self._adds.setdefault(table, []).append(action)
        rows: int = data.num_rows
        return rows

    def retire(self, table: str, file: LiveFile) -> None:
        """Take a file out of the table (its rows are gone, or rewritten into a new file)."""
        action = RemoveAction(
            file.path,
            True,
            int(time.time() * 1000),
            file.size,
            {PRACTICE: file.practice} if file.practice is not None else {},
        )
        with self._guard:
            self._removes.setdefault(table, []).append(action)

    @property
    def changed(self) -> bool:
        return bool(self._adds or self._removes)

    def commit(self, operation: str, details: dict[str, Any]) -> LakeVersion:
        """Commit each changed table, then publish the lake version that names them all."""
        lake = self.lake
        for name in sorted(set(self._adds) | set(self._removes)):
            table = DeltaTable(str(lake.path(name)))
            actions: list[AddAction | RemoveAction] = [
                *self._adds.get(name, []),
                *self._removes.get(name, []),
            ]
            table.create_write_transaction(
                actions,
                mode="append",
                schema=lake.schemas[name],
                partition_by=lake.partition_by(name) or None,
            )
            durable.step(f"lake table {name} committed")
        return self._publish(operation, details, self.base.readable_from)

    def _publish(self, operation: str, details: dict[str, Any], readable_from: int) -> LakeVersion:
        version = LakeVersion(
            self.base.number + 1,
            _now(),
            operation,
            self.lake._delta_versions(self.base.tables),
            readable_from,
            details,
        )
        self.lake._write_version(version)
        self.base = version
        self._adds, self._removes = {}, {}
        return version

    def vacuum(self, details: dict[str, Any] | None = None) -> tuple[LakeVersion, int]:
        """Physically remove every file the committed state does not use: first commit the
        version from which on older versions are unreadable, then delete, then record that the
        deleting finished (see the module's docstring). The version, and the files deleted."""
        if self._adds or self._removes:
            raise RuntimeError("commit before vacuuming")
        base = self.base
        if base.operation == "vacuum" and base.readable_from == base.number:
            version = base  # committed by a clean-up that was cut short: finish it
        else:
            version = self._publish("vacuum", details or {}, self.base.number + 1)
        removed: int = self.lake.vacuum()
        durable.step("lake vacuumed")
        durable.write_file(self.lake._meta / VACUUMED, f"{version.number}\n".encode())
        return version, removed


def read_parquet(
    path: Path, columns: list[str] | None = None, dictionary: list[str] | None = None
) -> pa.Table:
    """One Parquet file, in the calling thread. Not `pq.read_table`, which builds a dataset
    around the file first: for the lake's many small files that costs more than the reading
    (loads and erasures read every file of the practices they touch, daily)."""
    with pq.ParquetFile(path, read_dictionary=dictionary) as parquet:
        return parquet.read(columns=columns, use_threads=False)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version_name(number: int) -> str:
    return f"{number:020d}.json"


def _read_version(path: Path) -> LakeVersion:
    document = orjson.loads(path.read_bytes())
    return LakeVersion(
        document["version"],
        document["committed_at"],
        document["operation"],
        {str(k): int(v) for k, v in document["tables"].items()},
        int(document.get("readable_from", 0)),
        document.get("details", {}),
    )
