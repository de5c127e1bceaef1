"""Benchmark a year of operation: daily incremental packages from every practice, the daily
erasure, and compaction in the daily cycle; do file counts stay bounded and the daily work flat?

    .venv/bin/python bench/year_bench.py                       # 20 practices, 120 days
    .venv/bin/python bench/year_bench.py --practices 100 --days 365
    .venv/bin/python bench/year_bench.py --no-compaction       # the same year without it

The nation: `gpdpr synth` (columnar, seed 3, 60 patients a practice) and each practice's
historic package, loaded on day 0 (untimed). Then each day, for every practice, one incremental
package written directly (the loader's input, as `collect` hands it over once verified): a few
rows of each table sampled from the practice's own historic extract, given new record ids (new
records) except, on half the days, a third keeping theirs (corrections, which replace the older
copy), and a deletion of one earlier new record (a tombstone). All the day's packages are loaded
in one lake version, as one `collect` would. Then the cycle `gpdpr erase` runs: compaction
(merge a practice's files of a table once there are more than 8), then the erasure of that day's
new opt-out (one person a day) with its vacuum. Then a research query reads the lake (a count of
clinical events by practice, as a run would).

Printed every --every days: live files (what the current lake version names, all tables), data
files on disk (Parquet, the Delta logs' own checkpoints aside), and the seconds of that day's
load, compaction, erasure and query, the rows the query counted and the seconds since day 1;
and at the end the peak memory.

What grew, and what was done (the loads and erasures read every file of each practice they
touch, so their time follows the number of files):
  - each load added a file per practice and table: now its new rows go into the file it rewrites
    anyway (a correction's, a deletion's) or else into the practice's smallest file if under
    1 MiB (`collect.load.TAIL_BYTES`);
  - the tombstones still gain a file per practice a day (every package here deletes a record)
    and the ledger one per load: compaction merges them above 8 a practice;
  - every Delta table was opened (its log replayed, up to 100 commits since Delta's default
    checkpoint) several times a write: a new lake checkpoints every 10 commits, and a writer
    finds the Delta versions it needs from the log's file names;
  - a small Parquet file was read through a dataset built around it (`pq.read_table`), which
    cost more than the reading.

Figures (100 practices, 365 days, compaction in the cycle, Delta keeping a removed file for a
simulated week: `--tombstone-retention "interval 2 minutes"`):

    day   live on disk load s compact s erase s query s     rows
      5  1,405   1,405   3.42      0.08    1.00    0.19  158,158
     90  1,102   1,102   5.90      0.15    1.72    0.45  196,304
    180  1,304   1,304   5.28      0.08    1.37    0.32  235,265
    270  1,506   1,506   4.88      0.10    1.58    0.23  271,906
    365  1,405   1,405   6.72      0.11    2.16    0.41  308,614

    days      live files   median load s   median erase s   median query s   most compact s
    1-90     1,001-1,700       5.3             1.5              0.26             0.52
    91-180   1,001-1,700       6.0             1.6              0.32             0.88
    181-270  1,001-1,700       6.5             2.0              0.45             1.03
    271-365  1,001-1,700       6.2             2.0              0.42             0.55

Measured on 6 December 2026, `chrt -r 5`, on 2 cores shared with four other agents' work and
with benchmarks at a higher priority for part of it (load average 12 to 23), so single days
spike: the whole year in 79 minutes (12.9 s a day, setup excluded), peak memory 964 MB. The live
files stay between 1,001 and 1,700 all year (without compaction they grow by about 100 a day,
one tombstone file per practice: 6,253 by day 53 in an earlier run of the same code). The load,
the erasure and the query do not grow with the files; they grow a little with the lake, whose
rows nearly double over the year (158,158 to 308,614: each day's new records stay), and with
the machine's other work, which was heaviest over days 150 to 250. An earlier run with Delta's
default retention of removed files (a week of real time, so the whole simulated year) saw the
erasure rise from 1.5 s to 4.4 s by day 90, all of it the growing checkpoints: the retention
the service keeps is a week of days, which this run simulates. Before the loader kept a
practice's new rows in the file it rewrites anyway, the live files were 1,358 on day 1 and
4,089 by day 8, the load 2.5 s rising to 6.7 s.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.collect.erase import erase
from gpdpr.collect.load import load
from gpdpr.collect.verify import Package
from gpdpr.custodian.keys import init, issue_practice
from gpdpr.custodian.service import running
from gpdpr.lake import store
from gpdpr.lake.compact import compact
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.lake.tables import LakeTable
from gpdpr.practice.extract import ExtractRequest, extract
from gpdpr.practice.package import DELETIONS_SCHEMA
from gpdpr.synth.run import SynthRequest, synthesise

NEW_ROWS = 6  # rows of each table a practice sends a day
START = datetime(2026, 11, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--practices", type=int, default=20)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--every", type=int, default=0, help="print every N days")
    parser.add_argument("--no-compaction", action="store_true")
    parser.add_argument(
        "--tombstone-retention",
        default="interval 2 minutes",
        help="how long Delta keeps a removed file in its checkpoints (the service keeps Delta's "
        "default, a week: at about 14 s a simulated day, 2 minutes is about a simulated week)",
    )
    args = parser.parse_args()
    # A simulated year passes in an hour or two of real time: with Delta's week of retention
    # every removal of the whole run would stay in every checkpoint, which no service sees.
    store.CHECKPOINTS = store.CHECKPOINTS | {
        "delta.deletedFileRetentionDuration": args.tombstone_retention
    }
    every = args.every or max(1, args.days // 8)
    work = Path(tempfile.mkdtemp(prefix="gpdpr-year-"))
    try:
        run(work, args.practices, args.days, every, not args.no_compaction)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, practices: int, days: int, every: int, compaction: bool) -> None:
    print(f"{practices} practices, {days} days, compaction {'on' if compaction else 'off'}")
    historic = _nation(work, practices)
    lake = Lake.open(work / "lake")
    load(lake, list(historic.values()), set())
    people = {
        p: connect(lake.snapshot())
        .sql("select distinct patient from patients where practice = ? order by 1", params=[p])
        .fetchnumpy()["patient"]
        for p in historic
    }
    chance = np.random.default_rng(3)
    opted: set[str] = set()
    sent: dict[str, list[tuple[str, str]]] = {p: [] for p in historic}  # new records so far
    print(
        f"{'day':>5} {'live files':>10} {'on disk':>8} {'load s':>7} {'compact s':>9} "
        f"{'erase s':>7} {'query s':>7} {'rows':>10} {'elapsed s':>9}",
        flush=True,
    )
    began = time.perf_counter()
    for day in range(1, days + 1):
        until = START + timedelta(days=day)
        packages = [
            _incremental(work / "in" / str(day), package, lake.data, until, chance, sent[p])
            for p, package in historic.items()
        ]
        started = time.perf_counter()
        load(lake, packages, opted)
        loaded = time.perf_counter() - started
        shutil.rmtree(work / "in" / str(day))

        started = time.perf_counter()
        if compaction:
            compact(lake)
        compacted = time.perf_counter() - started

        practice = str(chance.choice(sorted(people)))
        person = str(chance.choice(people[practice]))
        opted.add(person)
        started = time.perf_counter()
        erase(lake, opted, {person: day})
        erased = time.perf_counter() - started

        started = time.perf_counter()
        rows = (
            connect(lake.snapshot())
            .sql("select practice, count(*) from clinical_events group by practice")
            .fetchall()
        )
        queried = time.perf_counter() - started
        if day % every == 0 or day == days:
            snapshot = lake.snapshot()
            live = sum(len(snapshot.files(name)) for name in lake.schemas)
            on_disk = sum(1 for f in lake.folder.rglob("*.parquet") if "_delta_log" not in f.parts)
            print(
                f"{day:>5} {live:>10,} {on_disk:>8,} {loaded:>7.2f} {compacted:>9.2f} "
                f"{erased:>7.2f} {queried:>7.2f} {sum(n for _, n in rows):>10,} "
                f"{time.perf_counter() - began:>9.0f}",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:,.0f} MB")


def _nation(work: Path, practices: int) -> dict[str, Package]:
    """Each practice's historic package (extracted for real), as the loader takes it."""
    synthesise(
        SynthRequest(
            out=work / "nation",
            practices=practices,
            patients=practices * 60,
            seed=3,
            format="columnar",
            mess_rate=0.0,
        )
    )
    keys = work / "keys"
    init(keys)
    out: dict[str, Package] = {}
    service = running(keys)
    url = service.__enter__()  # the custodian's pseudonym service, for the whole run
    for folder in sorted(p for p in (work / "nation").iterdir() if p.is_dir()):
        package = work / "historic" / folder.name
        package.parent.mkdir(exist_ok=True)
        kit = issue_practice(keys, folder.name, url)
        manifest = extract(ExtractRequest(folder, package, kit))
        window = manifest["window"]
        out[folder.name] = Package(
            package,
            manifest,
            str(manifest["package_id"]),
            folder.name,
            "historic",
            None,
            datetime.fromisoformat(window["until"]).astimezone(UTC),
            str(manifest["specification"]["version"]),
        )
    return out


_HISTORIC: dict[tuple[str, str], pa.Table] = {}


def _historic_rows(historic: Package, table: str) -> pa.Table:
    """A table of a practice's historic extract, read once (the days sample it, and the
    reading is the bench's, not the service's)."""
    key = (historic.practice, table)
    if key not in _HISTORIC:
        _HISTORIC[key] = pq.read_table(historic.file(table))
    return _HISTORIC[key]


def _incremental(
    folder: Path,
    historic: Package,
    tables: dict[str, LakeTable],
    until: datetime,
    chance: np.random.Generator,
    sent: list[tuple[str, str]],
) -> Package:
    """A day's package from one practice: rows sampled from its historic extract, most as new
    records, and the deletion of one record sent on an earlier day."""
    folder = folder / historic.practice
    folder.mkdir(parents=True)
    manifest_tables = {}
    for name, table in tables.items():
        rows = _historic_rows(historic, name)
        if rows.num_rows:
            picked = chance.choice(rows.num_rows, min(NEW_ROWS, rows.num_rows), replace=False)
            rows = rows.take(pa.array(np.sort(picked)))
            if table.patient is not None and table.key != table.patient:
                tag = f"-{until:%j}-"
                fresh = [f"{k}{tag}{i}" for i, k in enumerate(rows[table.key].to_pylist())]
                # On half the days, a third are corrections of records already held (which
                # rewrite the file holding them); on the others all are new records.
                keep = len(fresh) // 3 if chance.random() < 0.5 else 0
                ids = [*rows[table.key].to_pylist()[:keep], *fresh[keep:]]
                rows = rows.set_column(
                    rows.schema.get_field_index(table.key), table.key, pa.array(ids)
                )
                sent.extend((name, i) for i in fresh[keep:])
        pq.write_table(rows, folder / f"{name}.parquet")
        manifest_tables[name] = {"file": f"{name}.parquet", "rows": rows.num_rows}
    gone = [sent.pop(int(chance.integers(len(sent))))] if sent else []
    deletions = pa.table(
        {"table": [t for t, _ in gone], "record_id": [r for _, r in gone]},
        schema=DELETIONS_SCHEMA,
    )
    pq.write_table(deletions, folder / "deletions.parquet")
    manifest = {
        "tables": manifest_tables,
        "deletions": {"file": "deletions.parquet", "rows": deletions.num_rows},
        "created_at": until.isoformat(),
        "type1_opt_out": {"active": [], "withdrawn": []},
    }
    return Package(
        folder,
        manifest,
        str(uuid.uuid4()),
        historic.practice,
        "incremental",
        until - timedelta(days=1),
        until,
        historic.spec_version,
    )


if __name__ == "__main__":
    main()
