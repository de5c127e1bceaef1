"""Benchmark the central collector: loading packages into the lake, and erasing opted-out people.

    .venv/bin/python bench/collect_bench.py
    .venv/bin/python bench/collect_bench.py --only load:100000 erase:1000000

Runs (KIND:PATIENTS):

  load    `collect` of every package of a synthetic nation: practices = patients // 9,000, each
          extracted into one historic package. Timed: one call of
          `collect(Central(home), packages, workers=4, remove_inputs=True)`, from the first
          package verified to the lake version holding them all committed, its record and the
          collections index made, and the packages deleted (which collect does at its end).
          Rows are the rows it loaded (the sum of Loaded.total over the packages).
          Target: >= 2 million rows per second on 2 cores.
  erase   `erase(Lake.open(lake), opted_out, vacuum=True, workers=4)` on a lake of PATIENTS
          people, 1% of them opted out (10,000 of 1,000,000). Timed: that one call, from opening
          the lake to the vacuumed lake version committed, so every file that held an opted-out
          person is rewritten without them and the old files are deleted from disk. Rows are the
          rows erase scans: every row of every table with a patient column. Target: 10,000 people
          erased from 1,000,000 (about 50 million rows) in under 60 seconds.

Each run has fresh child processes. The first builds the input, untimed:
  load:  `gpdpr synth` (columnar, seed 1), the custodian's keys and each practice's kit, then
         every practice extracted with `extract_many` into a package.
  erase: a lake written directly, quicker than synthesising, extracting and loading it, and
         independent of them: for each practice (9,000 people each), every table's rows made
         with numpy in the shape of the lake's data files (the specification's fields plus
         package_id and extracted_at; the practice is the partition): per person 1 patients row,
         ~1 registration, ~26 clinical events, ~20 medicines, ~3 immunisations, ~0.1 allergies,
         ~12 appointments and ~1 referral (over-dispersed counts), grouped by person as an
         extract is; 64-hex pseudonyms (SHA-256 of the person's number), codes from a few
         hundred, dates over 10 years, a few dozen staff per practice. One file per practice and
         table, as a historic load leaves it, all committed as one lake version. That is about 64
         rows per person, as `gpdpr synth` makes: 64 million at 1,000,000, more than the target's
         50 million.
The second child times the run and reports its wall-clock seconds, its CPU seconds over them
(cores used), the cores other processes kept busy meanwhile (others, from /proc/stat: the machine
may be shared, and a busy neighbour slows the run) and its peak RSS (ru_maxrss: the collector's
threads are in this process). For erase a third child then checks, untimed, that no row of an
opted-out person is left in any live table, that exactly their rows were removed, and that no
file but the live ones is left on disk. Lake MB is every file under the lake folder (Parquet and
Delta logs), after the run. The input was written just before, so it is read from the page cache,
not the disk.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runs import CHILD, chosen_runs, run_child

LIST_SIZE = 9_000  # England's typical list size: practices = patients // 9,000
WORKERS = 4  # collect's and erase's thread pools (the default of both commands)
OPTED_OUT_SHARE = 0.01  # the target: 10,000 of 1,000,000
LOAD_TARGET = 2_000_000  # rows per second, packages to a committed lake version
ERASE_TARGET = 60.0  # seconds, 10,000 of 1,000,000 people
KINDS = ("load", "erase")
DEFAULT_RUNS = [
    ("load", 10_000),
    ("load", 100_000),
    ("load", 1_000_000),
    ("erase", 100_000),
    ("erase", 1_000_000),
]
# ---- the parent ------------------------------------------------------------------------------


def run_load(patients: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="gpdpr-bench-")
    try:
        made = run_child(__file__, "load-setup", str(patients), root)
        timed = run_child(__file__, "load", root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    accounted = timed["rows"] + timed["left_out"]
    if accounted != made["package_rows"]:
        sys.exit(
            f"loaded {timed['rows']:,} rows and left out {timed['left_out']:,} of the packages' "
            f"{made['package_rows']:,}"
        )
    return {**made, **timed}


def run_erase(patients: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="gpdpr-bench-")
    try:
        made = run_child(__file__, "erase-setup", str(patients), root)
        timed = run_child(__file__, "erase", root)
        checked = run_child(__file__, "erase-verify", root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    removed = timed["rows_removed"]
    if removed != made["opted_out_rows"] or timed["erased_people"] != made["people"]:
        sys.exit(
            f"erase removed {removed:,} rows of {timed['erased_people']:,} people; the "
            f"{made['people']:,} opted-out people had {made['opted_out_rows']:,}"
        )
    if checked["patient_rows"] != made["rows"] - removed:
        sys.exit(f"{checked['patient_rows']:,} rows left of {made['rows']:,} less {removed:,}")
    return {**made, **timed, **checked}


def _mb(size: float) -> str:
    return f"{size / 1e6:,.0f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        CHILDREN[sys.argv[2]](sys.argv[3:])
        return
    runs = chosen_runs(__doc__ or "", KINDS, DEFAULT_RUNS)

    console = Console(width=200)
    cores = os.cpu_count()
    loads = Table(
        title=f"gpdpr collect on {cores} cores, {WORKERS} threads: packages to a committed lake "
        f"version (target >= {LOAD_TARGET:,} rows/s)",
        header_style="bold",
    )
    erasures = Table(
        title=f"gpdpr erase on {cores} cores, {WORKERS} threads: {OPTED_OUT_SHARE:.0%} opted "
        f"out, rewritten and vacuumed (target < {ERASE_TARGET:.0f} s at 1,000,000 patients)",
        header_style="bold",
    )
    for table, columns in (
        (
            loads,
            [
                "run",
                "patients",
                "packages",
                "rows",
                "seconds",
                "rows/s",
                "cores used",
                "others",
                "peak MB",
            ],
        ),
        (
            erasures,
            [
                "run",
                "patients",
                "people",
                "rows",
                "rows removed",
                "files rewritten",
                "files deleted",
                "seconds",
                "rows/s",
                "cores used",
                "others",
                "peak MB",
            ],
        ),
    ):
        for column in columns:
            table.add_column(column, justify="left" if column == "run" else "right")
        table.add_column("lake MB", justify="right")
        table.add_column("lake MB per M rows", justify="right")

    notes: list[str] = []
    for name, patients in runs:
        run = f"{name}:{patients}"
        with console.status(f"{name} {patients:,} patients"):
            f = run_load(patients) if name == "load" else run_erase(patients)
        rate = f["rows"] / f["seconds"]
        lake = [_mb(f["lake_bytes"]), f"{f['lake_bytes'] / 1e6 / (f['lake_rows'] / 1e6):,.1f}"]
        cpu = [f"{f['cpu_seconds'] / f['seconds']:.2f}", f"{f['others']:.2f}"]
        busy = f" (others {f['others']:.2f} cores, stolen {f['stolen']:.2f})"
        if name == "load":
            loads.add_row(
                run,
                f"{patients:,}",
                f"{f['packages']:,}",
                f"{f['rows']:,}",
                f"{f['seconds']:.1f}",
                f"{rate:,.0f}",
                *cpu,
                f"{f['peak_mb']:,.0f}",
                *lake,
            )
            verdict = (
                "met"
                if rate >= LOAD_TARGET
                else f"missed by {LOAD_TARGET - rate:,.0f} rows/s ({rate / LOAD_TARGET:.1%} of it)"
            )
            notes.append(f"{run}: {rate:,.0f} rows/s, load target {verdict}{busy}")
        else:
            erasures.add_row(
                run,
                f"{patients:,}",
                f"{f['people']:,}",
                f"{f['rows']:,}",
                f"{f['rows_removed']:,}",
                f"{f['files_rewritten']:,}",
                f"{f['files_deleted']:,}",
                f"{f['seconds']:.1f}",
                f"{rate:,.0f}",
                *cpu,
                f"{f['peak_mb']:,.0f}",
                *lake,
            )
            if patients == 1_000_000:
                over = f["seconds"] - ERASE_TARGET
                verdict = "met" if over < 0 else f"missed by {over:.1f} s"
                notes.append(f"{run}: {f['seconds']:.1f} s, erase target {verdict}{busy}")
            else:
                notes.append(f"{run}: {f['seconds']:.1f} s{busy}")
        console.print(f"done: {name} {patients:,} in {f['seconds']:.1f}s")
    if loads.row_count:
        console.print(loads)
    if erasures.row_count:
        console.print(erasures)
    console.print(
        "rows: loaded (load) or scanned, every row of every table with a patient column (erase); "
        "people: opted out, each checked gone afterwards; cores used = the child's CPU seconds / "
        "seconds; others = cores other processes kept busy meanwhile; peak MB: ru_maxrss of the "
        "timed child; lake MB: every file under the lake after the run, per million rows it then "
        "holds."
    )
    for note in notes:
        console.print(note)


# ---- the children ----------------------------------------------------------------------------


def _figures(figures: dict[str, Any]) -> None:
    print(json.dumps(figures))


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine() -> tuple[float, float]:
    """CPU seconds every process on the machine has used so far, and seconds the hypervisor
    stole from its virtual CPUs (Linux's /proc/stat; zeros elsewhere)."""
    try:
        ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    per_second = os.sysconf("SC_CLK_TCK")
    user, nice, system, _, _, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / per_second, steal / per_second


class _Stopwatch:
    """Wall-clock and CPU seconds of a timed run, and how busy the rest of the machine was."""

    def __init__(self) -> None:
        import time

        self.clock = time.perf_counter
        self.machine = _machine()
        self.cpu = _cpu()
        self.started = self.clock()

    def stop(self) -> dict[str, float]:
        seconds = self.clock() - self.started
        cpu = _cpu() - self.cpu
        busy, stolen = (now - then for now, then in zip(_machine(), self.machine, strict=True))
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "others": max(0.0, busy - cpu) / seconds,  # cores other processes kept busy
            "stolen": stolen / seconds,  # cores the hypervisor gave to other machines
        }


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_load_setup(args: list[str]) -> None:
    """Synthesise the nation, issue the keys, extract every practice into a package."""
    from gpdpr.custodian.keys import init, issue_practice
    from gpdpr.custodian.service import running
    from gpdpr.practice.many import extract_many
    from gpdpr.synth.run import SynthRequest, synthesise

    patients, root = int(args[0]), Path(args[1])
    nation, keys = root / "nation", root / "keys"
    request = SynthRequest(
        out=nation,
        practices=max(1, patients // LIST_SIZE),
        patients=patients,
        seed=1,
        format="columnar",
    )
    summary, _ = synthesise(request)
    init(keys)
    folders = [nation / p.ods_code for p in summary.practices]
    with running(keys) as url:
        for p in summary.practices:
            issue_practice(keys, p.ods_code, url)
        manifests = extract_many(folders, root / "packages", keys / "practices")
    _figures(
        {
            "packages": len(manifests),
            "package_rows": sum(
                int(t["rows"]) for m in manifests.values() for t in m["tables"].values()
            ),
        }
    )


def child_load(args: list[str]) -> None:
    """Time one collect of every package into an empty lake."""
    from gpdpr.collect.service import Central, collect

    root = Path(args[0])
    central = Central(root / "home", key_folder=root / "keys")
    central.engine().dispose()  # the database made and migrated, untimed
    central.lake()  # the empty lake made, untimed
    folders = sorted(p for p in (root / "packages").iterdir() if p.is_dir())
    watch = _Stopwatch()
    result = collect(central, folders, workers=WORKERS, remove_inputs=True)
    timed = watch.stop()
    peak = _peak_mb()
    if result.refused or result.version is None:
        sys.exit(f"collect refused {[r.reason for r in result.refused]}")
    left = [p.name for p in folders if p.exists()]
    if left:
        sys.exit(f"collect left {len(left)} packages behind")
    rows = sum(loaded.total for loaded in result.loaded)
    # Rows of someone with a Type 1 opt-out at another of their practices are left out.
    left_out = sum(loaded.type1_dropped + loaded.stale for loaded in result.loaded)
    _figures(
        {
            "rows": rows,
            "lake_rows": rows,
            "left_out": left_out,
            **timed,
            "peak_mb": peak,
            "lake_bytes": _tree_bytes(central.lake_folder),
        }
    )


# How the generated lake is shaped. Per person, the mean number of rows of each table (counts are
# Poisson with a gamma-distributed mean, so some people have many and many have few).
PER_PERSON = {
    "registrations": 1.05,
    "clinical_events": 26.0,
    "medications": 20.0,
    "immunisations": 3.0,
    "allergies": 0.1,
    "appointments": 12.0,
    "referrals": 1.0,
}
STAFF = 30  # per practice
AS_OF = "2026-10-31"
YEARS = 10
CODES = 300  # distinct codes a code column draws from

# A text column: its values (drawn with weights 1/rank) and the share of nulls; columns of one
# null group are null together. Codes come from CODES made-up SNOMED-like numbers.
_Text = tuple[list[str] | None, float, str]
TEXT: dict[str, _Text] = {
    "sex": (["F", "M", "U"], 0.0, ""),
    "region_code": ([f"E1200000{i}" for i in range(1, 10)], 0.0, ""),
    "registration_type": (["regular", "temporary"], 0.0, ""),
    "end_reason": (["moved", "left", "death"], 0.9, "ended"),
    "category": (["observation", "condition", "procedure", "symptom"], 0.0, ""),
    "unit": (["mm[Hg]", "kg", "kg/m2", "mmol/L", "%", "mL/min", "cm"], 0.6, "value"),
    "quantity_unit": (["tablet", "capsule", "mL", "g", "dose", "patch"], 0.0, ""),
    "course": (["repeat", "acute", "repeat-dispensing"], 0.0, ""),
    "source": (["issued", "elsewhere"], 0.0, ""),
    "mode": (["face-to-face", "telephone", "video", "home-visit"], 0.0, ""),
    "status": (["fulfilled", "cancelled", "noshow", "booked"], 0.0, ""),
    "priority": (["routine", "urgent", "two-week-wait"], 0.0, ""),
    "role": (["GP", "nurse", "healthcare assistant", "pharmacist"], 0.0, ""),
    "code": (None, 0.0, ""),
    "procedure_code": (None, 0.0, ""),
    "vaccine_code": (None, 0.0, ""),
}
# Whole numbers: [low, high), share of nulls, null group.
NUMBER: dict[str, tuple[float, float, float, str]] = {
    "birth_year": (1925, 2027, 0.0, ""),
    "birth_month": (1, 13, 0.0, ""),
    "death_year": (2016, 2027, 0.99, "died"),
    "death_month": (1, 13, 0.99, "died"),
    "imd_decile": (1, 11, 0.0, ""),
    "duration_minutes": (10, 31, 0.0, ""),
    "value": (1, 200, 0.6, "value"),
    "quantity": (1, 200, 0.0, ""),
}
NULL_DATES = {"end_date": (0.9, "ended")}


def _pseudonyms(seed: bytes, n: int) -> list[str]:
    import hashlib

    return [hashlib.sha256(seed + i.to_bytes(8, "little")).hexdigest() for i in range(n)]


class _Practice:
    """One practice's rows, table by table, in the lake's file schema."""

    def __init__(self, number: int, people: Any, seed: int, offsets: dict[str, int]) -> None:
        import uuid

        import numpy as np
        import pyarrow as pa

        self.np, self.pa = np, pa
        self.rng = np.random.default_rng([seed, number])
        self.number = number
        self.ods = f"Z{10001 + number}"
        self.people = people  # pa.Array of this practice's patient pseudonyms
        self.staff = pa.array(_pseudonyms(f"staff {self.ods}".encode(), STAFF), pa.string())
        households = max(1, len(people) * 2 // 5)
        self.postcodes = pa.array(_pseudonyms(f"pc {self.ods}".encode(), households), pa.string())
        self.package = pa.array([str(uuid.UUID(int=int(self.rng.integers(2**62))))], pa.string())
        self.offsets = offsets  # the next record id of each table, across practices
        self.end = np.datetime64(AS_OF, "us")
        self.codes = [str(c) for c in np.random.default_rng(seed).integers(10**7, 10**15, CODES)]
        self.counts: dict[str, Any] = {}  # rows of each table per person

    def table(self, name: str, schema: Any) -> Any:
        np, pa, rng, number = self.np, self.pa, self.rng, self.number
        n_people = len(self.people)
        if name == "registrations":  # one each, and a second for a few who left and came back
            counts = 1 + rng.poisson(0.05, n_people)
            who = np.repeat(np.arange(n_people, dtype=np.int32), counts)
        elif name in PER_PERSON:
            counts = rng.poisson(PER_PERSON[name] * rng.gamma(2.0, 0.5, n_people))
            who = np.repeat(np.arange(n_people, dtype=np.int32), counts)
        elif name == "patients":
            counts = np.ones(n_people, np.int64)
            who = np.arange(n_people, dtype=np.int32)
        else:  # staff
            counts, who = None, None
        if counts is not None:
            self.counts[name] = counts
        n = STAFF if who is None else len(who)
        masks: dict[str, Any] = {}

        def null(share: float, group: str) -> Any:
            if not share:
                return None
            if group not in masks:
                masks[group] = rng.random(n) < share
            return masks[group]

        columns: dict[str, Any] = {}
        for field in schema:
            f, kind = field.name, field.type
            if f == "record_id":
                start = self.offsets.get(name, 1)
                self.offsets[name] = start + n
                columns[f] = pa.array(np.arange(start, start + n)).cast(pa.string())
            elif f == "patient":
                columns[f] = self.people if name == "patients" else self._coded(who, self.people)
            elif f == "staff":
                columns[f] = self.staff if name == "staff" else self._pick(self.staff, n)
            elif f == "postcode_key":
                columns[f] = self._pick(self.postcodes, n, skewed=False)
            elif f == "lsoa_code":
                areas = [f"E01{900_000 + 10 * number + i}" for i in range(10)]
                columns[f] = self._pick(pa.array(areas), n)
            elif f == "package_id":
                columns[f] = self._coded(np.zeros(n, np.int32), self.package)
            elif f == "extracted_at":
                columns[f] = pa.array(np.full(n, self.end), kind)
            elif f == "linkable":
                columns[f] = pa.array(rng.random(n) < 0.99)
            elif f in TEXT:
                values, share, group = TEXT[f]
                choices = pa.array(values or self.codes, pa.string())
                columns[f] = self._pick(choices, n, mask=null(share, group))
            elif f in NUMBER:
                low, high, share, group = NUMBER[f]
                drawn = rng.integers(int(low), int(high), n)
                numbers = drawn.astype(np.float64) if pa.types.is_floating(kind) else drawn
                columns[f] = pa.array(numbers, kind, mask=null(share, group))
            elif pa.types.is_date32(kind):
                share, group = NULL_DATES.get(f, (0.0, ""))
                days = rng.integers(0, 365 * YEARS, n)
                dates = (self.end.astype("datetime64[D]") - days).astype("datetime64[D]")
                columns[f] = pa.array(dates, kind, mask=null(share, group))
            elif pa.types.is_timestamp(kind):
                micros = rng.integers(0, 365 * YEARS * 86_400 * 10**6, n)
                columns[f] = pa.array(self.end - micros.astype("timedelta64[us]"), kind)
            else:
                raise AssertionError(f"no generator for {name}.{f} ({kind})")
        data = pa.table(columns)
        plain = [
            pa.field(c.name, c.type.value_type if pa.types.is_dictionary(c.type) else c.type)
            for c in data.schema
        ]
        if not pa.schema(plain).equals(schema):
            raise AssertionError(f"{name}: generated {pa.schema(plain)}, the lake has {schema}")
        return data

    def _coded(self, indices: Any, values: Any) -> Any:
        pa = self.pa
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values)

    def _pick(self, values: Any, n: int, skewed: bool = True, mask: Any = None) -> Any:
        np, pa = self.np, self.pa
        weights = 1 / np.arange(1, len(values) + 1) if skewed else np.ones(len(values))
        picked = self.rng.choice(len(values), n, p=weights / weights.sum()).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(picked, pa.int32(), mask=mask), values)


def child_erase_setup(args: list[str]) -> None:
    """Write the lake, one practice at a time, and choose who opts out."""
    import numpy as np
    import pyarrow as pa

    from gpdpr.lake.store import Lake

    patients, root = int(args[0]), Path(args[1])
    seed = 1
    people = pa.array(_pseudonyms(b"", patients), pa.string())
    rng = np.random.default_rng(seed)
    chosen = np.zeros(patients, bool)
    chosen[rng.choice(patients, int(patients * OPTED_OUT_SHARE), replace=False)] = True
    lake = Lake.open(root / "lake")
    bounds = np.linspace(0, patients, max(1, patients // LIST_SIZE) + 1).astype(int)
    offsets: dict[str, int] = {}
    rows = opted_out_rows = files = 0
    with lake.writing() as tx:
        for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
            practice = _Practice(number, people[start:stop], seed, offsets)
            mine = chosen[start:stop]
            for name, table in lake.data.items():
                data = practice.table(name, table.file_schema)
                files += 1
                tx.write(name, practice.ods, data)
                if table.patient is not None:
                    rows += data.num_rows
                    opted_out_rows += int(practice.counts[name][mine].sum())
        tx.commit("load", {})
    opted_out = people.filter(pa.array(chosen)).to_pylist()
    (root / "opted_out.txt").write_text("\n".join(opted_out) + "\n")
    _figures(
        {
            "practices": len(bounds) - 1,
            "files": files,
            "rows": rows,
            "people": len(opted_out),
            "opted_out_rows": opted_out_rows,
        }
    )


def child_erase(args: list[str]) -> None:
    """Time one erasure, vacuum included."""
    from gpdpr.collect.erase import erase
    from gpdpr.lake.store import Lake

    root = Path(args[0])
    opted_out = set((root / "opted_out.txt").read_text().split())
    watch = _Stopwatch()
    # Every one of them awaiting a receipt, so the cycle always commits and vacuums.
    awaiting = {person: n for n, person in enumerate(sorted(opted_out))}
    result = erase(Lake.open(root / "lake"), opted_out, awaiting, workers=WORKERS)
    timed = watch.stop()
    _figures(
        {
            **timed,
            "peak_mb": _peak_mb(),
            "rows_removed": result.rows_removed,
            "erased_people": len(result.by_person),
            "files_rewritten": result.files_rewritten,
            "files_deleted": result.files_deleted,
        }
    )


def child_erase_verify(args: list[str]) -> None:
    """Nothing of the opted-out people in the lake, and nothing but live files on disk."""
    import pyarrow as pa

    from gpdpr.collect.load import member
    from gpdpr.lake.store import Lake

    root = Path(args[0])
    opted_out = pa.array(sorted(set((root / "opted_out.txt").read_text().split())), pa.string())
    lake = Lake.open(root / "lake")
    snapshot = lake.snapshot()
    rows = patient_rows = 0
    for table in lake.data.values():
        files = snapshot.files(table.name)
        live = {f.path for f in files}
        on_disk = {
            str(p.relative_to(lake.path(table.name)))
            for p in lake.path(table.name).rglob("*.parquet")
        }
        if on_disk != live:
            sys.exit(f"{table.name}: {len(on_disk - live)} files on disk that are not live")
        rows += sum(f.rows for f in files)
        if table.patient is None:
            continue
        patient_rows += sum(f.rows for f in files)
        for file in files:
            held = snapshot.read_file(table.name, file, [table.patient])[table.patient]
            if member(held, opted_out).true_count:
                sys.exit(f"{table.name}: an opted-out person is still in {file.path}")
    _figures(
        {"lake_rows": rows, "patient_rows": patient_rows, "lake_bytes": _tree_bytes(lake.folder)}
    )


CHILDREN = {
    "load-setup": child_load_setup,
    "load": child_load,
    "erase-setup": child_erase_setup,
    "erase": child_erase,
    "erase-verify": child_erase_verify,
}


if __name__ == "__main__":
    main()
