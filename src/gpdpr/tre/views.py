"""Project views: the only data a run ever sees.

From one lake version, for one agreement: only the tables and columns the definition reads (each
within the agreement's scope, checked before this is reached), only records in the agreement's
period, only patients in its population, never anyone with a Type 1 opt-out awaiting erasure,
never anyone with a National Data Opt-out unless the agreement records an exemption, and every
pseudonym (patient, staff, postcode) replaced by the project's own, made with the key the
custodian derives for the project. Two projects' views therefore share no identifier. Each
person also has a whole-number key for this set of views only (`patient_key`, 0 .. people - 1),
which the engines join by.

What a definition needs granted to build its views (`required_fields`) covers every read: each
column's fields, and for every table it touches (with or without columns) the patient field and
the fields its period is checked on. Runs ask the agreement for exactly that before any data is
read (runs.submit, governance.agreements.authorise).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa

from gpdpr.custodian.central import project_pseudonyms
from gpdpr.lake.query import connect
from gpdpr.lake.store import Snapshot
from gpdpr.tre.engines.sql import DIALECTS
from gpdpr.tre.query.schema import (
    PATIENT_FIELD,
    PATIENT_ID,
    PATIENT_KEY,
    PRACTICE,
    TABLES,
    Table,
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


def build(
    snapshot: Snapshot,
    scope: ViewScope,
    used: Mapping[str, Iterable[str]],
    project_key: bytes,
) -> dict[str, pa.Table]:
    """The views a definition reading `used` ({table: columns}) runs on."""
    con = connect(snapshot)
    try:
        con.execute("set TimeZone = 'UTC'")
        con.register(
            "excluded", pa.table({"patient": pa.array(sorted(scope.excluded), pa.string())})
        )
        con.execute(f"create temp table people as {_people_sql(scope)}")
        lake_ids = con.sql("select patient from people").to_arrow_table().column("patient")
        ids = pa.table(
            {
                "patient": lake_ids,
                PATIENT_ID: project_pseudonyms(project_key, lake_ids),
                PATIENT_KEY: pa.array(range(len(lake_ids)), pa.int64()),
            }
        )
        con.register("ids", ids)
        tables = {"patients": set(used.get("patients", ()))} | {t: set(c) for t, c in used.items()}
        return {
            name: _project(con.sql(_view_sql(name, columns, scope)).to_arrow_table(), project_key)
            for name, columns in tables.items()
        }
    finally:
        con.close()


def _people_sql(scope: ViewScope) -> str:
    """Each person once (their most recently changed patient row, if they moved practice),
    within the population and not excluded."""
    conditions = ["patient not in (select patient from excluded)"]
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
        "last, extracted_at desc, practice) as latest from patients"
    )
    return f"select * from ({latest}) where latest = 1 and {' and '.join(conditions)}"


def _years(born: str, on: date) -> str:
    """Whole years from `born` to `on`, null when the month of birth is not known."""
    day = f"date '{on.isoformat()}'"
    return (
        f"(year({day}) - year({born}) - case when month({day}) < month({born}) then 1 else 0 end)"
    )


def _quote(text: str) -> str:
    return DIALECTS["duckdb"].string(text)  # the one way text becomes SQL (engines.sql)


def _view_sql(name: str, columns: set[str], scope: ViewScope) -> str:
    table = TABLES[name]
    selected = [f"ids.{PATIENT_ID}", f"ids.{PATIENT_KEY}"] + [
        _column_sql(c) for c in sorted(columns)
    ]
    if table.one_row_per_patient:
        return f"select {', '.join(selected)} from people r join ids using (patient)"
    start, end = (f"date '{d.isoformat()}'" for d in (scope.data_from, scope.data_to))
    if period_fields(table) == ("start_date", "end_date"):
        # A registration counts if any of it falls in the period.
        period = f"r.start_date < {end} and (r.end_date is null or r.end_date >= {start})"
    else:
        (field,) = period_fields(table)
        day = f"cast(r.{field} as date)"
        period = f"{day} >= {start} and {day} < {end}"
    return (
        f"select {', '.join(selected)} from {table.lake} r join ids using (patient) where {period}"
    )


def _column_sql(column: str) -> str:
    if column == "date_of_birth":
        return "make_date(r.birth_year, r.birth_month, 1) as date_of_birth"
    if column == "date_of_death":
        return "make_date(r.death_year, r.death_month, 1) as date_of_death"
    if column == PRACTICE:
        return f"r.{PRACTICE} as {PRACTICE}"
    if column in TIMESTAMPS:
        return f"cast(r.{column} as date) as {column}"
    return f"r.{column} as {column}"


def _project(table: pa.Table, key: bytes) -> pa.Table:
    for column in PSEUDONYM_COLUMNS:
        if column in table.column_names:
            index = table.column_names.index(column)
            table = table.set_column(index, column, project_pseudonyms(key, table.column(column)))
    return table
