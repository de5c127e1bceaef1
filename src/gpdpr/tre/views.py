"""Project views: the only data a run ever sees.

From one lake version, for one agreement: only the tables and columns the definition reads (each
within the agreement's scope, checked before this is reached), only records in the agreement's
period, only patients in its population, never anyone with a Type 1 opt-out awaiting erasure,
never anyone with a National Data Opt-out unless the agreement records an exemption, and every
pseudonym (patient, staff, postcode) replaced by the project's own, made with the key the
custodian derives for the project. Two projects' views therefore share no identifier. Each
person also has a whole-number key for this set of views only (`patient_key`, 0 .. people - 1),
which the engines join by.

A run's views are not copied out of the lake: `plan` describes them as SQL over the lake
version's own Parquet files (the population, each view, the pseudonym maps), and the engine
makes them where it runs, reading only the columns and rows they need (engines.duckdb.install,
engines.spark.Sandbox.install). Python computes one project pseudonym per person read, to show
a dataset's patients and make the run's use tokens; no row of a table passes through it.
`made` makes the same views into Arrow tables, for dummy data and tests.

What a definition needs granted to build its views (`required_fields`) covers every read: each
column's fields, and for every table it touches (with or without columns) the patient field and
the fields its period is checked on. Runs ask the agreement for exactly that before any data is
read (runs.submit, governance.agreements.authorise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any

import duckdb
import pyarrow as pa

from gpdpr.custodian.central import project_pseudonyms
from gpdpr.lake.store import Snapshot
from gpdpr.tre.engines.base import LakeViews
from gpdpr.tre.engines.sql import DIALECTS
from gpdpr.tre.query.schema import (
    PATIENT_FIELD,
    PATIENT_ID,
    PATIENT_KEY,
    TABLES,
    Table,
    view_name,
)

# Columns that are pseudonyms in the lake, shown under the project's key.
PSEUDONYM_COLUMNS = ("staff", "postcode_key")
# Lake timestamps shown as days.
TIMESTAMPS = {"recorded_at", "start", "booked_at"}


@dataclass(frozen=True)
class ViewScope:
    """What an agreement lets a run see (see governance.agreements.Scope)."""

    data_from: date  # first day of records
    data_to: date  # records before this day
    population: Mapping[str, Any]
    excluded: frozenset[str]  # lake pseudonyms never to be shown (opt-outs)


def required_fields(used: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """{specification table: fields} a definition reading `used` ({table: columns}, every table
    it touches, with or without columns) needs granted: for every table, the patient pseudonym
    (each view ties its rows to people by it) and the fields its period is checked on (the
    view reads them to keep only records in the agreement's period); and the fields each
    column read is made from. Patients' pseudonyms always: every run starts from the list of
    people."""
    wanted: dict[str, set[str]] = {"patients": {PATIENT_FIELD}}
    for name, columns in used.items():
        table = TABLES[name]
        fields = wanted.setdefault(table.lake, set())
        fields.update((PATIENT_FIELD, *period_fields(table)))
        for column in columns:
            fields.update(table.columns[column].needs)
    return {t: sorted(f) for t, f in sorted(wanted.items())}


def period_fields(table: Table) -> tuple[str, ...]:
    """The fields a view reads to keep only records in the agreement's period (`_view_sql`)."""
    if table.lake == "registrations":
        return ("start_date", "end_date")  # any of the registration in the period
    return (table.date,) if table.date else ()


def plan(
    snapshot: Snapshot,
    scope: ViewScope,
    used: Mapping[str, Iterable[str]],
    project: Callable[[pa.Array | pa.ChunkedArray], pa.Array | pa.ChunkedArray],
) -> LakeViews:
    """The views a definition reading `used` ({table: columns}) runs on, as queries over the
    lake version's files for the engine to make: no data is read here. `project` shows a lake
    pseudonym as the project sees it (the custodian's key, held by the caller)."""
    tables = {"patients": set(used.get("patients", ()))} | {t: set(c) for t, c in used.items()}
    patients = TABLES["patients"]
    shown = {f for c in tables["patients"] for f in patients.columns[c].needs}
    lake_tables = {"patients"} | {TABLES[name].lake for name in tables}
    mapped: dict[str, set[str]] = {}
    for name, columns in tables.items():
        for column in PSEUDONYM_COLUMNS:
            if column in columns:
                mapped.setdefault(column, set()).add(TABLES[name].lake)
    return LakeViews(
        sources={t: snapshot.dataset(t) for t in sorted(lake_tables)},
        excluded=pa.table({"patient": pa.array(sorted(scope.excluded), pa.string())}),
        people=_people_sql(scope, shown),
        views={name: _view_sql(name, columns, scope) for name, columns in tables.items()},
        mapped={column: tuple(sorted(t)) for column, t in sorted(mapped.items())},
        project=project,
    )


def build(
    snapshot: Snapshot,
    scope: ViewScope,
    used: Mapping[str, Iterable[str]],
    project_key: bytes,
) -> dict[str, pa.Table]:
    """The views `plan` gives, made (see `made`)."""
    return made(plan(snapshot, scope, used, partial(project_pseudonyms, project_key)))


def made(lake: LakeViews) -> dict[str, pa.Table]:
    """Planned views made into Arrow tables (for dummy data, tests and engines handed views
    ready-made), each with the project pseudonym and the whole-number key of every row's
    patient: made by DuckDB as an engine makes them, outside any sandbox (this is the
    service's own SQL)."""
    from gpdpr.tre.engines.duckdb import install

    con = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        con.execute("set TimeZone = 'UTC'")
        ids = install(lake, con, con.register)
        tables = {}
        for name in lake.views:
            table = con.sql(f"select * from {view_name(name)}").to_arrow_table()
            keys = table.column(PATIENT_ID)
            table = table.set_column(0, PATIENT_ID, ids.take(keys))
            tables[name] = table.add_column(1, PATIENT_KEY, keys)
        return tables
    finally:
        con.close()


def _people_sql(scope: ViewScope, fields: Iterable[str]) -> str:
    """Each person once (their most recently changed patient row, if they moved practice),
    within the population and not excluded: their pseudonym and the patients' `fields`."""
    conditions = [f"patient not in (select patient from {source('excluded')})"]
    population = scope.population
    born = "make_date(birth_year, birth_month, 1)"
    if population.get("min_age") is not None:
        conditions.append(f"{_years(born, scope.data_to)} >= {int(population['min_age'])}")
    if population.get("max_age") is not None:
        conditions.append(f"{_years(born, scope.data_from)} <= {int(population['max_age'])}")
    for key, column in (("sexes", "sex"), ("regions", "region_code")):
        listed = population.get(key)
        if listed:
            values = ", ".join(_quote(str(v)) for v in listed)
            conditions.append(f"{column} in ({values})")
    latest = (
        "select *, row_number() over (partition by patient order by last_modified desc nulls "
        f"last, extracted_at desc, practice) as latest from {source('patients')}"
    )
    kept = ", ".join(sorted({PATIENT_FIELD, *fields}))
    return f"select {kept} from ({latest}) where latest = 1 and {' and '.join(conditions)}"


def _years(born: str, on: date) -> str:
    """Whole years from `born` to `on`, null when the month of birth is not known."""
    day = f"date '{on.isoformat()}'"
    return (
        f"(year({day}) - year({born}) - case when month({day}) < month({born}) then 1 else 0 end)"
    )


def _quote(text: str) -> str:
    return DIALECTS["duckdb"].string(text)  # the one way text becomes SQL (engines.sql)


def _view_sql(name: str, columns: set[str], scope: ViewScope) -> str:
    """A view's rows: each person's key (as `patient_id`), then the columns read, for people in
    `PEOPLE` only and records in the period only."""
    table = TABLES[name]
    columns_sql = [_column_sql(c) for c in sorted(columns)]
    joins = "".join(
        f" left join {source('map_' + c)} m_{c} on m_{c}.lake = r.{c}"
        for c in sorted(columns)
        if c in PSEUDONYM_COLUMNS
    )
    if table.one_row_per_patient:
        # The person's own row of the patients table: the one the population was drawn from.
        selected = ", ".join([f"r.{KEY} as {PATIENT_ID}", *columns_sql])
        return f"select {selected} from {PEOPLE} r{joins}"
    selected = ", ".join([f"p.{KEY} as {PATIENT_ID}", *columns_sql])
    rows = f"{source(table.lake)} r join {PEOPLE} p on p.patient = r.patient{joins}"
    start, end = (f"date '{d.isoformat()}'" for d in (scope.data_from, scope.data_to))
    if period_fields(table) == ("start_date", "end_date"):
        # A registration counts if any of it falls in the period.
        period = f"r.start_date < {end} and (r.end_date is null or r.end_date >= {start})"
    else:
        (field,) = period_fields(table)
        day = f"cast(r.{field} as date)"
        period = f"{day} >= {start} and {day} < {end}"
    return f"select {selected} from {rows} where {period}"


def _column_sql(column: str) -> str:
    if column == "date_of_birth":
        return "make_date(r.birth_year, r.birth_month, 1) as date_of_birth"
    if column == "date_of_death":
        return "make_date(r.death_year, r.death_month, 1) as date_of_death"
    if column in PSEUDONYM_COLUMNS:
        return f"m_{column}.project as {column}"  # the lake's pseudonym never shown
    if column in TIMESTAMPS:
        return f"cast(r.{column} as date) as {column}"
    return f"r.{column} as {column}"


def source(name: str) -> str:
    """The name an engine reads a lake table (or the opt-outs, or a pseudonym map) by: never a
    view's name, so no compiled query can name it (the guard allows views only)."""
    return f"source_{name}"


# The people in the population, each with their whole-number key: an engine makes this table
# (`keyed_people_sql`) before any view is read.
PEOPLE = source("people")
KEY = PATIENT_KEY


def keyed_people_sql(lake: LakeViews) -> str:
    """The population, each person with their whole-number key in pseudonym order: the same
    people get the same keys on every engine."""
    return (
        f"select *, cast(row_number() over (order by patient) - 1 as bigint) as {KEY} "
        f"from ({lake.people})"
    )


def distinct_values_sql(column: str, tables: Iterable[str]) -> str:
    """Every lake pseudonym of a pseudonym column (staff, postcode) in the lake tables read."""
    return " union ".join(
        f"select distinct {column} as lake from {source(t)} where {column} is not null"
        for t in tables
    )


def project_ids(lake: LakeViews, lake_ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """The people's project pseudonyms, in the order of their lake pseudonyms given."""
    ids = lake.project(lake_ids)
    return ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([ids])
