"""Compaction: the small files daily packages leave behind, merged.

Every load adds at least one file per table for each practice it loads (and the ledger one per
load, the tombstones one per package with deletions), so a year of daily incrementals leaves
hundreds of small files per practice and table, and everything that reads the lake, loads and
erasures first of all, slows with them. Compaction merges a practice's files of one table into
one once there are more than `max_files` of them.

It is one lake transaction like any other: a kill at any point leaves the lake as before it or
with it committed whole. It is safe with erasure because it reads only what the current version
holds (an erased person's rows are in no live file, so none comes back), and it deletes nothing:
the files it retires stay readable for the versions that name them until the next erasure's
vacuum, which deletes them with every other file no longer used.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from gpdpr.lake.store import Lake, LakeVersion, LiveFile, Transaction

MAX_FILES = 8  # more files than this for one practice and table, and they are merged


@dataclass
class Compaction:
    version: LakeVersion | None  # None: nothing needed merging
    files_merged: int = 0
    files_written: int = 0


def compact(lake: Lake, max_files: int = MAX_FILES, workers: int = 4) -> Compaction:
    """Merge each practice's files of each table when there are more than `max_files`."""
    with lake.writing() as tx:
        jobs: list[tuple[str, str | None, list[LiveFile]]] = []
        for name in lake.schemas:
            groups: dict[str | None, list[LiveFile]] = {}
            for file in tx.snapshot.files(name):
                groups.setdefault(file.practice, []).append(file)
            jobs += [(name, p, files) for p, files in groups.items() if len(files) > max_files]
        if not jobs:
            return Compaction(None)

        def merge(job: tuple[str, str | None, list[LiveFile]]) -> None:
            _merge(tx, *job)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(merge, jobs))
        merged = sum(len(files) for _, _, files in jobs)
        version = tx.commit("compact", {"files_merged": merged, "files_written": len(jobs)})
    return Compaction(version, merged, len(jobs))


def _merge(tx: Transaction, table: str, practice: str | None, files: list[LiveFile]) -> None:
    rows = pa.concat_tables([tx.snapshot.read_file(table, f) for f in files])
    tx.write(table, practice, rows)
    for file in files:
        tx.retire(table, file)
