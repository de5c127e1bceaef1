"""Benchmark the research environment's engines: a dataset and a measure over project views.

    .venv/bin/python bench/tre_bench.py                       # 10k / 100k / 1M, DuckDB and Spark
    .venv/bin/python bench/tre_bench.py --scales 10000 --engines duckdb --repeat 1
    .venv/bin/python bench/tre_bench.py --sql                 # print the compiled and hand SQL
    .venv/bin/python bench/tre_bench.py --explain --scales 100000   # EXPLAIN ANALYZE both

Workloads (the definitions are below, built with gpdpr.tre.language and sent through JSON as the
service receives them):

  dataset  a population (registered on 2025-01-01, aged 18 or over) and 12 variables: sex, age,
           an age band (case/when), region, IMD decile, the practice registered at on the index
           date, the first and the last date of hypertension, the number of respiratory
           infections in five years, the number of statins issued in 2024, the latest HbA1c
           value and whether asthma was recorded before the index date; and one aggregate table
           (patients, mean and median HbA1c and mean statins by age band and sex) so that it
           validates.
           Target: at most 3 s on DuckDB at 1,000,000 patients.
  measure  five years of months (60 intervals from 2021-01): numerator = issued a statin in the
           month, denominator = registered on its first day, group_by = that practice.
           Target: at most 10 s on DuckDB at 1,000,000 patients.

The views (see bench/tre_data.py) are made once per scale with NumPy and cached as Parquet under
bench/out/tre-data/. Each workload, engine and scale then runs in a fresh child process, which
reads the views the definition needs (only its tables and columns, as views.build gives them:
timed apart, "load s") and then times, best of --repeat:

  compiled  `engine.run(definition, views)`: checking the definition's limits, the views'
            patient keys, the sandboxed connection, registering the Arrow views, the compiled
            SQL checked by the guard, the answer as Arrow (a dataset's patients shown by
            pseudonym).
  control   `release.control.control(definition, results)`, timed apart: disclosure control
            of the measure's rows, the aggregate table made from the dataset with its
            statistics' rules, and every cell the differencing check is asked about.
  hand      DuckDB only: the same done with the best SQL written by hand for the same question
            (HAND_DATASET and HAND_MEASURE below) on a connection set up the same way. Its
            answer must equal the compiled one exactly, or the benchmark stops; "ratio" is
            compiled seconds / hand seconds (target at most 1.5).
  direct    DuckDB, measure only: hand-written SQL with the shape the compiler falls back to
            for measures it cannot compute over spans of intervals, one row per person and month
            (HAND_MEASURE_DIRECT), checked the same way: how far writing that shape well gets.

Every DuckDB connection of a run, the engine's and the hand-written ones', has memory_limit
--memory-limit (8GB; DuckDB's own default is 80% of the machine's memory, which is shared), and
spills to a temporary folder beyond it.

Spark (gpdpr.tre.engines.spark.SparkEngine) runs the same definition on the same views when
that module can be imported; its answer must equal DuckDB's. Its seconds include turning the
Arrow views into Spark DataFrames, as the engine's run() does; the session is started before
timing.

A run (compiled or hand-written) whose first time is over a minute is not repeated: its table
cell says "(1 run)".

Rows read are the rows of the views the definition reads; rows/s = rows read / seconds. Peak MB
is the high-water mark of resident memory (VmHWM, reset just before the timed runs) of the child
and its descendants (Spark's JVM), so it includes the views held in memory (views MB: their Arrow
size). Others is how many cores other processes kept busy during the timed runs (from
/proc/stat): the machine is shared, and a busy neighbour slows a run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import tre_data
from gpdpr.tre.engines import sql
from gpdpr.tre.engines.base import Results, conform, intervals_table
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    case,
    clinical_events,
    definition_of,
    medications,
    months,
    patients,
    practice_registrations,
    when,
)
from gpdpr.tre.query.schema import view_name
from gpdpr.tre.release.control import control

CHILD = "--child"
SCALES = (10_000, 100_000, 1_000_000)
ENGINES = ("duckdb", "spark")
TARGETS = {"dataset": 3.0, "measure": 10.0}  # seconds on DuckDB at 1,000,000 patients
TARGET_SCALE = 1_000_000
RATIO_TARGET = 1.5  # compiled / hand-written
SPARK_MAX = 100_000  # Spark runs up to this many patients unless --spark-max says otherwise
TIMEOUT = 1_800  # seconds a child may take before it is stopped
ONCE = 60.0  # seconds: a run slower than this is not repeated
MEMORY_LIMIT = "8GB"  # DuckDB's, in every run: the machine is shared

INDEX = "2025-01-01"
HYPERTENSION = tre_data.codelist("cond.hypertension")
ASTHMA = tre_data.codelist("cond.asthma")
RESPIRATORY = tre_data.codelist("acute.urti", "acute.sore_throat", "acute.cough")
HBA1C = tre_data.codelist("obs.hba1c")
STATINS = tre_data.codelist("drug.atorvastatin", "drug.simvastatin")
MEASURE_START = "2021-01-01"
MEASURE_MONTHS = 60


# ---- the workloads ---------------------------------------------------------------------------


def dataset_definition() -> n.Definition:
    events, meds = clinical_events, medications
    dataset = Dataset()
    registration = practice_registrations.for_patient_on(INDEX)
    dataset.define_population(registration.exists_for_patient() & (patients.age_on(INDEX) >= 18))
    dataset.sex = patients.sex
    dataset.age = patients.age_on(INDEX)
    dataset.age_band = case(
        when(dataset.age < 40).then("18-39"),
        when(dataset.age < 65).then("40-64"),
        otherwise="65+",
    )
    dataset.region = patients.region_code
    dataset.imd = patients.imd_decile
    dataset.practice = registration.practice
    before = events.effective_date.is_before(INDEX)
    hypertension = events.where(events.code.is_in(HYPERTENSION) & before).sort_by(
        events.effective_date
    )
    dataset.first_hypertension = hypertension.first_for_patient().effective_date
    dataset.last_hypertension = hypertension.last_for_patient().effective_date
    dataset.respiratory_5y = events.where(
        events.code.is_in(RESPIRATORY)
        & events.effective_date.is_on_or_between("2020-01-01", "2024-12-31")
    ).count_for_patient()
    dataset.statins_2024 = meds.where(
        meds.code.is_in(STATINS) & meds.issue_date.is_on_or_between("2024-01-01", "2024-12-31")
    ).count_for_patient()
    dataset.latest_hba1c = (
        events.where(events.code.is_in(HBA1C) & before)
        .sort_by(events.effective_date)
        .last_for_patient()
        .value
    )
    dataset.asthma = events.where(events.code.is_in(ASTHMA) & before).exists_for_patient()
    dataset.add_table(
        "by_age_sex",
        by=["age_band", "sex"],
        statistics={"latest_hba1c": ["mean", "median"], "statins_2024": ["mean"]},
    )
    return _received(definition_of(dataset, None))


def measure_definition() -> n.Definition:
    meds = medications
    registration = practice_registrations.for_patient_on(INTERVAL.start_date)
    measures = Measures()
    measures.define_measure(
        "statins_by_practice",
        numerator=meds.where(
            meds.code.is_in(STATINS) & meds.issue_date.is_during(INTERVAL)
        ).exists_for_patient(),
        denominator=registration.exists_for_patient(),
        group_by={"practice": registration.practice},
        intervals=months(MEASURE_MONTHS).starting_on(MEASURE_START),
    )
    return _received(definition_of(None, measures))


def _received(definition: n.Definition) -> n.Definition:
    """The definition as the service takes it: through its JSON form, validated."""
    received = serial.from_json(serial.to_json(definition))
    n.validate(received)
    return received


def _in(codes: list[str]) -> str:
    return "(" + ", ".join(f"'{c}'" for c in codes) + ")"


# The best DuckDB SQL written by hand for the dataset: one pass over clinical_events for all five
# event variables (conditional aggregates over the rows of any of their codelists), one over
# medications, the current registration by arg_max, joined to the patients. Ties are broken as the
# compiler breaks them (by the sort keys, then every column read, descending for `last`): the
# registration by (start_date, practice), the latest HbA1c by (effective_date, value). Every event
# kept has a date (the conditions compare it), so first and last dates are min and max. One thing
# it takes from these views: every HbA1c event has a value (arg_max passes over null values, where
# the compiled query would give the latest event's null). Rows are joined by the views'
# whole-number patient_key, as the engines join them, and the pseudonym shown at the end.
HAND_DATASET = f"""
with registered as (
    select patient_key, arg_max(practice, (start_date, practice)) as practice
    from v_practice_registrations
    where start_date <= date '{INDEX}' and (end_date is null or end_date >= date '{INDEX}')
    group by patient_key
),
events as (
    select patient_key,
        min(effective_date) filter (where code in {_in(HYPERTENSION)}) as first_hypertension,
        max(effective_date) filter (where code in {_in(HYPERTENSION)}) as last_hypertension,
        count(*) filter (
            where code in {_in(RESPIRATORY)} and effective_date >= date '2020-01-01'
        ) as respiratory_5y,
        arg_max(value, (effective_date, value)) filter (where code in {_in(HBA1C)})
            as latest_hba1c,
        bool_or(code in {_in(ASTHMA)}) as asthma
    from v_clinical_events
    where effective_date < date '{INDEX}'
        and code in {_in(HYPERTENSION + RESPIRATORY + HBA1C + ASTHMA)}
    group by patient_key
),
statins as (
    select patient_key, count(*) as statins_2024
    from v_medications
    where code in {_in(STATINS)} and issue_date between date '2024-01-01' and date '2024-12-31'
    group by patient_key
),
people as (
    select patient_key, patient_id, sex, region_code, imd_decile,
        date_sub('year', date_of_birth, date '{INDEX}') as age
    from v_patients
)
select p.patient_id, p.sex, p.age,
    case when p.age < 40 then '18-39' when p.age < 65 then '40-64' else '65+' end as age_band,
    p.region_code as region, p.imd_decile as imd, r.practice,
    e.first_hypertension, e.last_hypertension, coalesce(e.respiratory_5y, 0) as respiratory_5y,
    coalesce(s.statins_2024, 0) as statins_2024, e.latest_hba1c,
    coalesce(e.asthma, false) as asthma
from people p
join registered r using (patient_key)
left join events e using (patient_key)
left join statins s using (patient_key)
where p.age >= 18
"""

HAND_TABLE = """
select age_band, sex, count(*) as patients,
    avg(latest_hba1c) as latest_hba1c_mean, median(latest_hba1c) as latest_hba1c_median,
    avg(statins_2024) as statins_2024_mean
from dataset group by age_band, sex order by age_band, sex
"""

# Two hand-written versions of the measure. DIRECT has the shape the compiler falls back to for
# a measure it cannot compute over spans (sql.measure_by_interval), one row per person and month,
# written as well as that shape allows: the months made in the query; each
# registration joined to the months whose first day it covers (a range join with no OR: the open
# end made a far date), the latest per person and month by arg_max; the statin issues reduced to
# distinct (person, month) with date_trunc, as the intervals are calendar months; one left join,
# one group by. Semi-joined to the patients, as the compiled query starts from them.
HAND_MEASURE_DIRECT = f"""
with months as (
    select cast(m as date) as interval_start,
        cast(m + interval 1 month - interval 1 day as date) as interval_end
    from range(date '{MEASURE_START}', date '{MEASURE_START}' + interval {MEASURE_MONTHS} month,
        interval 1 month) t(m)
),
registered as (
    select r.patient_key, m.interval_start, arg_max(r.practice, (r.start_date, r.practice))
        as practice
    from v_practice_registrations r
    join months m
        on r.start_date <= m.interval_start
        and coalesce(r.end_date, date '9999-12-31') >= m.interval_start
    where r.patient_key in (select patient_key from v_patients)
    group by r.patient_key, m.interval_start
),
issued as (
    select distinct patient_key, cast(date_trunc('month', issue_date) as date) as interval_start
    from v_medications
    where code in {_in(STATINS)}
        and issue_date >= date '{MEASURE_START}'
        and issue_date < date '{MEASURE_START}' + interval {MEASURE_MONTHS} month
)
select m.interval_start, m.interval_end, r.practice,
    count(i.patient_key) as numerator, count(*) as denominator
from registered r
join months m using (interval_start)
left join issued i using (patient_key, interval_start)
group by m.interval_start, m.interval_end, r.practice
order by m.interval_start, m.interval_end, r.practice
"""


FIRST_YEAR, FIRST_MONTH = int(MEASURE_START[:4]), int(MEASURE_START[5:7])


def _month_index(day: str) -> str:
    """The number of the first month (0 = MEASURE_START's) starting on or after `day`, kept to
    0..MEASURE_MONTHS."""
    index = f"(year({day}) - {FIRST_YEAR}) * 12 + month({day}) - {FIRST_MONTH}"
    index += f" + (day({day}) > 1)::int"
    return f"greatest(0, least({MEASURE_MONTHS}, {index}))"


# BEST never makes a row per person and month. Each person's time is cut into spans with one
# current registration: a person with one registration has one span; for the few with several,
# their time is cut at every start and end and each piece given the registration current in it
# (the latest to start, then the greatest practice: the compiled tie-break). A span covers the
# months numbered first_k to end_k - 1 (those whose first day it holds). The denominators are
# running sums over the months of +1 where spans begin and -1 where they end, per practice; the
# numerators join the distinct (person, month) statin issues to the person's span covering the
# month. It relies on nothing about the data beyond what the views guarantee. Both join by the
# views' patient_key.
HAND_MEASURE = f"""
with months as (
    select k, cast(date '{MEASURE_START}' + to_months(k) as date) as interval_start,
        cast(date '{MEASURE_START}' + to_months(k + 1) - interval 1 day as date) as interval_end
    from range({MEASURE_MONTHS}) t(k)
),
registrations as (
    -- end_date is a registration's last day: the day after it ends the half-open span below
    select patient_key, start_date, coalesce(end_date + 1, date '9999-12-31') as end_date, practice
    from v_practice_registrations
    where patient_key in (select patient_key from v_patients)
),
several as (
    select patient_key from registrations group by patient_key having count(*) > 1
),
bounds as (
    select distinct patient_key, day from (
        select patient_key, start_date as day
        from registrations semi join several using (patient_key)
        union all
        select patient_key, end_date
        from registrations semi join several using (patient_key)
    )
),
pieces as (
    select patient_key, day as piece_start,
        lead(day) over (partition by patient_key order by day) as piece_end
    from bounds
),
current as (
    select p.patient_key, p.piece_start as start_date, p.piece_end as end_date,
        arg_max(r.practice, (r.start_date, r.practice)) as practice
    from pieces p
    join registrations r
        on r.patient_key = p.patient_key
        and r.start_date <= p.piece_start and r.end_date > p.piece_start
    where p.piece_end is not null
    group by p.patient_key, p.piece_start, p.piece_end
),
spans as (
    select patient_key, practice, {_month_index("start_date")} as first_k,
        {_month_index("end_date")} as end_k
    from (
        select patient_key, start_date, end_date, practice
        from registrations anti join several using (patient_key)
        union all
        select patient_key, start_date, end_date, practice from current
    )
),
changes as (
    select practice, k, sum(change) as change from (
        select practice, first_k as k, 1 as change from spans where first_k < end_k
        union all
        select practice, end_k, -1 from spans where first_k < end_k and end_k < {MEASURE_MONTHS}
    )
    group by practice, k
),
denominators as (
    select g.practice, m.k,
        sum(coalesce(c.change, 0)) over (partition by g.practice order by m.k) as denominator
    from (select distinct practice from changes) g
    cross join months m
    left join changes c on c.practice = g.practice and c.k = m.k
),
issued as (
    select distinct patient_key,
        (year(issue_date) - {FIRST_YEAR}) * 12 + month(issue_date) - {FIRST_MONTH} as k
    from v_medications
    where code in {_in(STATINS)}
        and issue_date >= date '{MEASURE_START}'
        and issue_date < date '{MEASURE_START}' + interval {MEASURE_MONTHS} month
),
numerators as (
    select s.practice, i.k, count(*) as numerator
    from issued i
    join spans s on s.patient_key = i.patient_key and i.k >= s.first_k and i.k < s.end_k
    group by s.practice, i.k
)
select m.interval_start, m.interval_end, d.practice,
    coalesce(n.numerator, 0) as numerator, d.denominator
from denominators d
join months m using (k)
left join numerators n using (practice, k)
where d.denominator > 0
order by m.interval_start, m.interval_end, d.practice
"""


def _connect(views: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A connection set up as DuckDBEngine sets its own up."""
    con = duckdb.connect()
    con.execute("set enable_progress_bar = false")
    con.execute("set TimeZone = 'UTC'")
    con.execute("set preserve_insertion_order = false")
    for name, table in views.items():
        con.register(view_name(name), table)
    return con


# A hand-written answer: (name, SQL) in order; each result is registered under its name for the
# statements after it (the aggregate table reads `dataset`).
Hand = tuple[tuple[str, str], ...]


def run_hand(views: Mapping[str, pa.Table], statements: Hand) -> dict[str, pa.Table]:
    con = _connect(views)
    try:
        found: dict[str, pa.Table] = {}
        for name, text in statements:
            found[name] = con.sql(text).to_arrow_table()
            con.register(name, found[name])
        return found
    finally:
        con.close()


@dataclass(frozen=True)
class Workload:
    definition: Callable[[], n.Definition]
    hand: Hand  # the best hand-written SQL: the ratio's
    direct: Hand | None = None  # a hand-written version with the compiled query's shape


WORKLOADS = {
    "dataset": Workload(dataset_definition, (("dataset", HAND_DATASET),)),
    "measure": Workload(
        measure_definition,
        (("statins_by_practice", HAND_MEASURE),),
        (("statins_by_practice", HAND_MEASURE_DIRECT),),
    ),
}


def answers(results: Results) -> dict[str, pa.Table]:
    """Every table a run computed, by name."""
    out = dict(results.measures)
    if results.dataset is not None:
        out["dataset"] = results.dataset
    return out


def compiled_sql(definition: n.Definition, dialect: str = "duckdb") -> list[str]:
    d = sql.DIALECTS[dialect]
    made = []
    if definition.population is not None:
        made.append(sql.dataset_sql(definition, d))
    made += [sql.measure_sql(definition, m, d) for m in definition.measures]
    return made


def same_answers(found: dict[str, pa.Table], expected: dict[str, pa.Table]) -> list[str]:
    """How two runs' answers differ (nothing: the same), rows compared in a sorted order; the
    found tables are first cast to the expected ones' types."""
    problems = []
    if set(found) != set(expected):
        return [f"tables {sorted(found)} against {sorted(expected)}"]
    for name, want in expected.items():
        got = found[name]
        if got.column_names != want.column_names:
            problems.append(f"{name}: columns {got.column_names} against {want.column_names}")
            continue
        got = conform(got, want.schema)
        keys = [(c, "ascending") for c in want.column_names]
        got, want = got.sort_by(keys), want.sort_by(keys)
        if got.num_rows != want.num_rows:
            problems.append(f"{name}: {got.num_rows:,} rows against {want.num_rows:,}")
            continue
        for column in want.column_names:
            a, b = got.column(column), want.column(column)
            if not a.equals(b):
                differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
                problems.append(
                    f"{name}.{column}: {len(differ):,} rows differ, e.g. row {differ[0]}: "
                    f"{got.slice(differ[0], 1).to_pylist()} against "
                    f"{want.slice(differ[0], 1).to_pylist()}"
                )
    return problems


# ---- measuring -------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _tree() -> list[int]:
    return [os.getpid(), *_descendants(os.getpid())]


def reset_peak() -> None:
    """Start the resident-memory high-water mark again from now (Linux: clear_refs 5)."""
    for pid in _tree():
        with suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb() -> float:
    """The high-water mark of resident memory since reset_peak, of this process and every
    descendant (Spark's JVM), in MB; ru_maxrss where /proc is not there."""
    total = 0.0
    for pid in _tree():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    if total:
        return total
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _machine_busy() -> float:
    """CPU seconds every process on the machine has used so far (Linux's /proc/stat)."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _, _, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _tree_cpu() -> float:
    """CPU seconds used by this process and its descendants (live ones, from /proc)."""
    total = 0.0
    per_second = os.sysconf("SC_CLK_TCK")
    for pid in _tree():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / per_second  # utime, stime
    return total


@dataclass
class Watch:
    seconds: list[float]
    busy: float = 0.0  # machine CPU seconds meanwhile
    mine: float = 0.0  # this process tree's
    wall: float = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        machine, mine = _machine_busy(), _tree_cpu()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.seconds.append(seconds)
        self.wall += seconds
        self.busy += _machine_busy() - machine
        self.mine += _tree_cpu() - mine

    def others(self) -> float:
        """Cores other processes kept busy while this was timed."""
        return max(0.0, self.busy - self.mine) / self.wall if self.wall else 0.0


# ---- the children ----------------------------------------------------------------------------


def _print(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)


def child_generate(args: list[str]) -> None:
    patients = int(args[0])
    started = time.perf_counter()
    folder, made = tre_data.ensure(patients)
    _print(
        {
            "folder": str(folder),
            "made": made,
            "seconds": time.perf_counter() - started,
            "rows": tre_data.counts(folder),
        }
    )


def _spark_engine() -> Any:
    """Spark's engine, its session (the JVM) started now, before the timed runs."""
    from gpdpr.tre.engines.spark import SparkEngine, session

    session()
    return SparkEngine()


def _timed(
    watch: Watch, repeat: int, run: Callable[[], dict[str, pa.Table]]
) -> tuple[dict[str, pa.Table], float]:
    """Run `repeat` times under the watch (once only if the first run takes over ONCE seconds);
    the last answer and the peak memory meanwhile."""
    reset_peak()
    found: dict[str, pa.Table] = {}
    for _ in range(repeat):
        with watch.timing():
            found = run()
        if watch.seconds[0] > ONCE:
            break
    return found, peak_mb()


def limit_duckdb(memory_limit: str, spill: Path) -> None:
    """Every DuckDB connection this process makes, the engine's included, held to
    `memory_limit` (spilling to `spill` beyond it), so that a run cannot take the memory of the
    machine it shares: DuckDB's own default is 80% of it."""
    connect = duckdb.connect

    def limited(database: str = ":memory:", read_only: bool = False, config: Any = None) -> Any:
        settings = {"memory_limit": memory_limit, "temp_directory": str(spill)}
        # The engine's own settings first, in its order (DuckDB refuses a temp_directory set
        # before external access is turned off), and its limits kept.
        given = dict(config or {})
        return connect(
            database, read_only, given | {k: v for k, v in settings.items() if k not in given}
        )

    setattr(duckdb, "connect", limited)  # noqa: B010 (a module attribute, for every caller)


def child_run(args: list[str]) -> None:
    """Load the views, time the compiled run (and the hand-written ones), check the answers."""
    workload, engine_name, folder, repeat = WORKLOADS[args[0]], args[1], Path(args[2]), int(args[3])
    with tempfile.TemporaryDirectory(prefix="gpdpr-tre-bench-") as spill:
        limit_duckdb(args[4], Path(spill))
        _run(workload, engine_name, folder, repeat)


def _run(workload: Workload, engine_name: str, folder: Path, repeat: int) -> None:
    definition = workload.definition()
    started = time.perf_counter()
    views = tre_data.load(folder, n.columns_used(definition))
    figures: dict[str, Any] = {
        "load_seconds": time.perf_counter() - started,
        "views_mb": sum(t.nbytes for t in views.values()) / 1e6,
        "rows_read": sum(t.num_rows for t in views.values()),
    }
    engine: Any = DuckDBEngine() if engine_name == "duckdb" else _spark_engine()
    watch = Watch([])
    ran: list[Results] = []

    def run() -> dict[str, pa.Table]:
        ran[:] = [engine.run(definition, views)]
        return answers(ran[0])

    found, peak = _timed(watch, repeat, run)
    figures |= {"seconds": watch.seconds, "peak_mb": peak}
    # What follows every run before anyone sees a number: disclosure control (a measure's
    # rows, the aggregate tables made from the dataset with their statistics' rules) and the
    # cells that the differencing check is asked about.
    controlling = Watch([])
    _timed(
        controlling, repeat, lambda: dict.fromkeys(control(definition, ran[0]).files, pa.table({}))
    )
    figures |= {"control_seconds": controlling.seconds}
    problems: list[str] = []
    if engine_name == "duckdb":
        hands = {"hand": workload.hand, "direct": workload.direct}
        for name, statements in hands.items():
            if statements is None:
                continue
            hand = Watch([])
            expected, peak = _timed(hand, repeat, partial(run_hand, views, statements))
            figures |= {f"{name}_seconds": hand.seconds, f"{name}_peak_mb": peak}
            problems += [f"the {name} hand-written SQL: {p}" for p in same_answers(found, expected)]
            watch.busy, watch.mine, watch.wall = (
                watch.busy + hand.busy,
                watch.mine + hand.mine,
                watch.wall + hand.wall,
            )
    else:
        duckdb_answer = answers(DuckDBEngine().run(definition, views))
        problems = [f"DuckDB: {p}" for p in same_answers(found, duckdb_answer)]
    if problems:
        sys.exit(f"{engine_name}'s answer differs from\n" + "\n".join(problems))
    figures |= {
        "others": watch.others(),
        "answer_rows": {name: t.num_rows for name, t in found.items()},
    }
    _print(figures)


def child_explain(args: list[str]) -> None:
    """EXPLAIN ANALYZE of the compiled and the hand-written SQL of a workload (its first
    statement: the dataset or the measure)."""
    workload, folder = WORKLOADS[args[0]], Path(args[1])
    definition = workload.definition()
    views = tre_data.load(folder, n.columns_used(definition))
    con = _connect(views)
    for measure in definition.measures:
        con.register(sql.INTERVALS, intervals_table(measure.intervals))
    pairs = [("compiled", compiled_sql(definition)[0]), ("hand", workload.hand[0][1])]
    if workload.direct:
        pairs.append(("direct hand", workload.direct[0][1]))
    for name, text in pairs:
        started = time.perf_counter()
        con.sql(text).to_arrow_table()
        print(f"-- {name}: {time.perf_counter() - started:.2f} s")
        plan = con.sql("explain analyze " + text).fetchall()
        print(plan[0][1])


CHILDREN = {"generate": child_generate, "run": child_run, "explain": child_explain}


# ---- the parent ------------------------------------------------------------------------------


class ChildFailed(Exception):
    pass


def _child(*args: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Run a child in its own process group; stop the whole group (a JVM too) if it overruns."""
    with subprocess.Popen(
        [sys.executable, __file__, CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise ChildFailed(f"stopped after {timeout:.0f} s") from None
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
    if process.returncode != 0:
        raise ChildFailed(err.strip().splitlines()[-1] if err.strip() else "failed") from None
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


def spark_missing() -> str | None:
    """Why Spark cannot run here, or None if it can."""
    check = subprocess.run(
        [sys.executable, "-c", "from gpdpr.tre.engines.spark import SparkEngine"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode == 0:
        return None
    lines = check.stderr.strip().splitlines()
    return lines[-1] if lines else "cannot import gpdpr.tre.engines.spark"


def _list(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scales", default=",".join(map(str, SCALES)), help="patients, e.g. 10000,100000"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="duckdb,spark")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="dataset,measure")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timed runs (3)")
    parser.add_argument(
        "--spark-max",
        type=int,
        default=SPARK_MAX,
        help=f"run Spark only up to this many patients ({SPARK_MAX:,})",
    )
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per run")
    parser.add_argument(
        "--memory-limit",
        default=MEMORY_LIMIT,
        help=f"DuckDB's memory_limit in every run, compiled and hand-written ({MEMORY_LIMIT})",
    )
    parser.add_argument("--sql", action="store_true", help="print the compiled and hand SQL")
    parser.add_argument(
        "--explain", action="store_true", help="EXPLAIN ANALYZE compiled and hand SQL (DuckDB)"
    )
    args = parser.parse_args()
    args.scales = _list(args.scales, int)
    args.engines = _list(args.engines, str)
    args.workloads = _list(args.workloads, str)
    for engine in args.engines:
        if engine not in ENGINES:
            parser.error(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}: use {', '.join(WORKLOADS)}")
    if args.repeat < 1:
        parser.error("--repeat needs at least 1")
    return args


def compiler_version() -> str:
    """Which compiler was measured: the commit, and a digest of the query modules as they are
    on disk (they may differ from the commit while someone works on them)."""
    import hashlib

    import gpdpr.tre

    folder = Path(gpdpr.tre.__file__).parent
    digest = hashlib.sha256()
    for name in ("engines/sql.py", "engines/duckdb.py", "query/nodes.py", "engines/spark.py"):
        path = folder / name
        digest.update(path.read_bytes() if path.exists() else b"")
    commit = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    state = " with uncommitted changes in gpdpr/tre" if changed else ""
    modules = f"sql/engines/nodes/spark sha256 {digest.hexdigest()[:12]}"
    return f"commit {commit or 'unknown'}{state}; {modules}"


def _best(seconds: list[float] | None, repeat: int) -> str:
    if not seconds:
        return ""
    return f"{min(seconds):.2f}" + ("" if len(seconds) == repeat else " (1 run)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        CHILDREN[sys.argv[2]](sys.argv[3:])
        return
    args = parse()
    console = Console(width=200)
    if args.sql:
        for name in args.workloads:
            workload = WORKLOADS[name]
            for text in compiled_sql(workload.definition()):
                console.print(f"-- {name}, compiled for DuckDB\n{text};\n", markup=False)
            for label, statements in (("by hand", workload.hand), ("direct", workload.direct)):
                for _, text in statements or ():
                    console.print(f"-- {name}, {label}\n{text.strip()};\n", markup=False)
        return

    folders: dict[int, str] = {}
    for scale in args.scales:
        with console.status(f"views of {scale:,} patients"):
            made = _child("generate", str(scale), timeout=args.timeout)
        folders[scale] = made["folder"]
        how = f"made in {made['seconds']:.1f} s" if made["made"] else "cached"
        rows = ", ".join(f"{t} {r:,}" for t, r in made["rows"].items())
        console.print(f"views of {scale:,} patients ({how}): {rows}")
    if args.explain:
        for name in args.workloads:
            for scale in args.scales:
                console.print(f"[bold]{name}, {scale:,} patients[/bold]")
                subprocess.run(
                    [sys.executable, __file__, CHILD, "explain", name, folders[scale]],
                    check=True,
                )
        return

    version = compiler_version()
    missing = spark_missing() if "spark" in args.engines else None
    table = Table(
        title=f"gpdpr tre engines on {os.cpu_count()} cores, best of {args.repeat}, DuckDB "
        f"memory_limit {args.memory_limit} "
        f"(targets at {TARGET_SCALE:,}: dataset <= {TARGETS['dataset']:.0f} s, measure <= "
        f"{TARGETS['measure']:.0f} s on DuckDB; compiled <= {RATIO_TARGET}x hand-written SQL)",
        header_style="bold",
    )
    for column in [
        "workload",
        "engine",
        "patients",
        "rows read",
        "load s",
        "seconds",
        "rows/s",
        "views MB",
        "peak MB",
        "control s",
        "hand s",
        "ratio",
        "hand peak MB",
        "direct s",
        "others",
        "note",
    ]:
        table.add_column(
            column, justify="left" if column in ("workload", "engine", "note") else "right"
        )
    notes: list[str] = []
    for name in args.workloads:
        for engine in args.engines:
            for scale in args.scales:
                label = f"{name} {engine} {scale:,}"
                first = [name, engine, f"{scale:,}"]
                if engine == "spark" and missing:
                    table.add_row(*first, *[""] * 12, f"not available: {missing}")
                    continue
                if engine == "spark" and scale > args.spark_max:
                    table.add_row(
                        *first, *[""] * 12, f"not run (over --spark-max {args.spark_max:,})"
                    )
                    continue
                with console.status(label):
                    try:
                        f = _child(
                            "run",
                            name,
                            engine,
                            folders[scale],
                            str(args.repeat),
                            args.memory_limit,
                            timeout=args.timeout,
                        )
                    except ChildFailed as failure:
                        table.add_row(*first, *[""] * 12, f"failed: {failure}")
                        console.print(f"failed: {label}: {failure}")
                        continue
                best = min(f["seconds"])
                hand = min(f["hand_seconds"]) if "hand_seconds" in f else None
                ratio = best / hand if hand else None
                verdicts = []
                if engine == "duckdb" and scale == TARGET_SCALE:
                    target = TARGETS[name]
                    verdicts.append(
                        f"target {target:.0f} s " + ("met" if best <= target else "MISSED")
                    )
                if ratio is not None and ratio > RATIO_TARGET:
                    verdicts.append(f"ratio over {RATIO_TARGET}")
                table.add_row(
                    *first,
                    f"{f['rows_read']:,}",
                    f"{f['load_seconds']:.2f}",
                    f"{best:.2f}" + ("" if len(f["seconds"]) == args.repeat else " (1 run)"),
                    f"{f['rows_read'] / best:,.0f}",
                    f"{f['views_mb']:,.0f}",
                    f"{f['peak_mb']:,.0f}",
                    _best(f.get("control_seconds"), args.repeat),
                    _best(f.get("hand_seconds"), args.repeat),
                    "" if ratio is None else f"{ratio:.2f}",
                    f"{f['hand_peak_mb']:,.0f}" if "hand_peak_mb" in f else "",
                    _best(f.get("direct_seconds"), args.repeat),
                    f"{f['others']:.2f}",
                    "; ".join(verdicts),
                )
                runs = ", ".join(f"{s:.2f}" for s in f["seconds"])
                hands = "".join(
                    f", {kind} "
                    + ", ".join(f"{s:.2f}" for s in f[f"{kind}_seconds"])
                    + f" s (peak {f[f'{kind}_peak_mb']:,.0f} MB)"
                    for kind in ("hand", "direct")
                    if f"{kind}_seconds" in f
                )
                console.print(
                    f"done: {label}: {runs} s{hands}"
                    + f", others {f['others']:.2f} cores, answer rows {f['answer_rows']}"
                )
                if verdicts:
                    notes.append(f"{label}: {best:.2f} s, {'; '.join(verdicts)}")
    console.print(table)
    console.print(
        "seconds: best compiled run (engine.run on views in memory, in its sandbox); load s: "
        "reading the views from Parquet, apart; control s: disclosure control after the run "
        "(measures' rows, aggregate tables and their statistics from the dataset, every cell "
        "for the differencing check); hand s: the best hand-written DuckDB SQL, same answer "
        "checked; "
        "ratio = seconds / hand s; direct s: hand-written SQL with the per-interval shape (one row "
        "per person and interval), same answer checked; peak MB: resident high-water "
        "mark during the timed runs, views included; others: cores other processes kept busy "
        "meanwhile."
    )
    console.print(f"compiler: {version}")
    for note in notes:
        console.print(note)


if __name__ == "__main__":
    main()
