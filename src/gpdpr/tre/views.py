"""Project views: the only data a run ever sees.

From one lake version, for one agreement: only the tables and columns the definition reads (each
within the agreement's scope, checked before this is reached), only records in the agreement's
period, only patients in its population, never anyone with a Type 1 opt-out awaiting erasure,
never anyone with a National Data Opt-out unless the agreement records an exemption, and every
pseudonym a run can show (staff, postcode) replaced by the project's own, made with the key the
custodian derives for the project. Two projects' views therefore share no identifier. Each
person has a whole-number key for this set of views only (`patient_key`, 0 .. people - 1),
which the engines join by and a run's dataset is kept by. (Views made ready-made, `made`,
also carry each person's project pseudonym, for dummy data and tests.)

A run's views are not copied out of the lake: `plan` describes them as SQL over the lake
version's own Parquet files (the population, each view, the pseudonym maps), and the engine
makes them where it runs, reading only the columns and rows they need (engines.duckdb.install,
engines.spark.Sandbox.install), and keys there what a run may show: each project pseudonym of
a member of staff or a postcode is an HMAC the engine computes (`mapping_sql`), from the key's
padded blocks, which it holds as a one-row table (`key_table`) that no compiled query may name;
each person's use token (`people_sql`) is a hash under the run's own key, held the same way
(`run_key_table`). A person's own project pseudonym is made nowhere: a run's dataset stays
inside it, by each person's whole-number key, and only tables leave. No row of a table passes
through Python.
`made` makes the same views into Arrow tables, for dummy data and tests.

What a definition needs granted to build its views (`required_fields`) covers every read: each
column's fields, and for every table it touches (with or without columns) the patient field and
the fields its period is checked on. Runs ask the agreement for exactly that before any data is
read (runs.submit, governance.agreements.authorise).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import pyarrow as pa

from gpdpr.custodian.central import SALT, run_key
from gpdpr.lake.store import Snapshot
from gpdpr.lake.tables import PERSON, person_numbers
from gpdpr.tre.engines.base import LakeViews
from gpdpr.tre.engines.sql import DIALECTS, Dialect
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
    project_key: bytes,
) -> LakeViews:
    """The views a definition reading `used` ({table: columns}) runs on, as queries over the
    lake version's files for the engine to make: no data is read here. `project_key` (the
    custodian's, for this project) makes the pseudonyms the project sees."""
    tables = {"patients": set(used.get("patients", ()))} | {t: set(c) for t, c in used.items()}
    patients = TABLES["patients"]
    shown = {f for c in tables["patients"] for f in patients.columns[c].needs}
    lake_tables = {"patients"} | {TABLES[name].lake for name in tables}
    mapped: dict[str, set[str]] = {}
    for name, columns in tables.items():
        for column in PSEUDONYM_COLUMNS:
            if column in columns:
                mapped.setdefault(column, set()).add(TABLES[name].lake)
    sources = {t: snapshot.dataset(t) for t in sorted(lake_tables)}
    # People are joined by their number (lake.tables.PERSON); a lake made before it had one
    # is joined by pseudonym, as it was then.
    person = PERSON if all(PERSON in f.schema.names for f in sources.values()) else PATIENT_FIELD
    return LakeViews(
        sources=sources,
        excluded=excluded_table(scope.excluded),
        people=_people_sql(scope, shown, person),
        views={name: _view_sql(name, columns, scope, person) for name, columns in tables.items()},
        mapped={column: tuple(sorted(t)) for column, t in sorted(mapped.items())},
        project_key=project_key,
        shown=tuple(sorted(shown)),
        numbered=person == PERSON,
    )


def excluded_table(excluded: Iterable[str]) -> pa.Table:
    """The people never to be shown (opt-outs), by lake pseudonym (`patient`) and by number
    (`person`, as bytes, as Delta's schema has it), so that the population is drawn without
    reading anyone's pseudonym when the lake's rows carry their numbers. A pseudonym that is
    not one refuses the run (person_numbers' ValueError): an opt-out is never passed over."""
    patients = pa.array(sorted(excluded), pa.string())
    numbers = person_numbers(patients).storage.cast(pa.binary())
    return pa.table({PATIENT_FIELD: patients, PERSON: numbers})


def build(
    snapshot: Snapshot,
    scope: ViewScope,
    used: Mapping[str, Iterable[str]],
    project_key: bytes,
) -> dict[str, pa.Table]:
    """The views `plan` gives, made (see `made`)."""
    return made(plan(snapshot, scope, used, project_key))


def made(lake: LakeViews) -> dict[str, pa.Table]:
    """Planned views made into Arrow tables (for dummy data, tests and engines handed views
    ready-made), each with the project pseudonym and the whole-number key of every row's
    patient: made by DuckDB as an engine makes them, outside any sandbox (this is the
    service's own SQL)."""
    from gpdpr.tre.engines.duckdb import install

    con = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        con.execute("set TimeZone = 'UTC'")
        install(lake, con, pseudonyms=True)
        ids = con.sql(PROJECT_IDS).to_arrow_table().column(0)
        tables = {}
        for name in lake.views:
            table = con.sql(f"select * from {view_name(name)}").to_arrow_table()
            keys = table.column(PATIENT_ID)
            table = table.set_column(0, PATIENT_ID, ids.take(keys))
            tables[name] = table.add_column(1, PATIENT_KEY, keys)
        return tables
    finally:
        con.close()


def _people_sql(scope: ViewScope, fields: Iterable[str], person: str) -> str:
    """Each person once (their most recently changed patient row, if they moved practice),
    within the population and not excluded: their pseudonym, what they are joined by (the
    lake's `person` column, as `person`) and the patients' `fields`."""
    conditions = [f"{person} not in (select {person} from {source('excluded')})"]
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
        f"select *, row_number() over (partition by {person} order by last_modified desc nulls "
        f"last, extracted_at desc, practice) as latest from {source('patients')}"
    )
    kept = ", ".join([*sorted({PATIENT_FIELD, *fields} - {PERSON}), f"{person} as {PERSON}"])
    return f"select {kept} from ({latest}) where latest = 1 and {' and '.join(conditions)}"


def _years(born: str, on: date) -> str:
    """Whole years from `born` to `on`, null when the month of birth is not known."""
    day = f"date '{on.isoformat()}'"
    return (
        f"(year({day}) - year({born}) - case when month({day}) < month({born}) then 1 else 0 end)"
    )


def _quote(text: str) -> str:
    return DIALECTS["duckdb"].string(text)  # the one way text becomes SQL (engines.sql)


def _view_sql(name: str, columns: set[str], scope: ViewScope, person: str) -> str:
    """A view's rows: each person's key (as `patient_id`), then the columns read, for people in
    `PEOPLE` only (joined by the lake's `person` column) and records in the period only."""
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
    rows = f"{source(table.lake)} r join {PEOPLE} p on p.{PERSON} = r.{person}{joins}"
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
# (`people_sql`, then `numbered_sql`) before any view is read.
PEOPLE = source("people")
KEY = PATIENT_KEY
# One row: the project key's padded blocks (`key_table`), which the engine keys pseudonyms with.
KEYS = source("key")
# One row: the run's own key for its use tokens (`run_key_table`).
RUN_KEY = source("run_key")


def key_table(key: bytes) -> pa.Table:
    """The key as HMAC-SHA256 uses it (RFC 2104): one row of its inner and outer padded
    blocks, so that SQL can key a pseudonym (`Dialect.hmac_sha256`) without the key ever being
    written into a query's text (and so into an error message)."""
    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    return pa.table(
        {
            "inner": pa.array([bytes(b ^ 0x36 for b in block)], pa.binary()),
            "outer": pa.array([bytes(b ^ 0x5C for b in block)], pa.binary()),
        }
    )


def run_key_table(lake: LakeViews) -> pa.Table:
    """The run's key for its use tokens (`custodian.central.run_key`), as one row, `key`: the
    engine makes the tokens with it, and it is never written into a query's text."""
    return pa.table({"key": pa.array([run_key(lake.project_key, lake.salt)], pa.binary())})


def project_sql(dialect: Dialect, column: str) -> str:
    """A lake pseudonym in `column` as the project sees it: the same HMAC as
    `custodian.central.project_pseudonyms`, computed by the engine (KEYS joined)."""
    return dialect.hmac_sha256(column, f"{KEYS}.inner", f"{KEYS}.outer")


def people_sql(lake: LakeViews, dialect: Dialect, pseudonyms: bool = False) -> str:
    """The population, each person with their use token for the run (`USES`), before they are
    numbered (an engine makes this `READ_PEOPLE`, then `PEOPLE` from it by `numbered_sql`).
    Not their pseudonym, unless `pseudonyms` (ready-made views, `made`, show their project
    pseudonyms), nor their project pseudonym: no run shows one (see
    `engines.base.Results`)."""
    if not SALT.fullmatch(lake.salt):
        raise ValueError("a run's salt is 32 hex digits")
    columns = ", ".join(f"q.{c}" for c in _kept(lake, pseudonyms))
    # The number as bytes: read as such, or, from a lake made before people had numbers, the
    # pseudonym's first 32 hex digits (what the number is made of).
    number = dialect.number("q.person") if lake.numbered else "unhex(substr(q.person, 1, 32))"
    token = _token_sql(dialect, number)
    return f"select {columns}, {token} as token from ({lake.people}) q cross join {RUN_KEY}"


def _kept(lake: LakeViews, pseudonyms: bool) -> list[str]:
    """What `PEOPLE` keeps of each person: their number, the patients' fields shown, and their
    pseudonym if `pseudonyms`."""
    kept = [PERSON, *(f for f in lake.shown if f not in (PERSON, PATIENT_FIELD))]
    return [*kept, PATIENT_FIELD] if pseudonyms else kept


# The people as `people_sql` reads them, with their tokens (`USES`); an engine numbers them
# into `PEOPLE` (`numbered_sql`).
READ_PEOPLE = source("people_read")
# Each person's whole-number key, in the order of their number: every engine numbers them so.
KEYED = f"cast(row_number() over (order by {PERSON}) - 1 as bigint) as {KEY}"


def numbered_sql(lake: LakeViews, pseudonyms: bool = False) -> str:
    """Each person in `READ_PEOPLE` with their whole-number key, in the order of what they are
    joined by (the same people get the same keys on every engine), without their token.
    Numbered on their own and joined back: DuckDB's window carries every column it is given
    through its sort, and at 10 million people, numbering the people whole took 9.7 s; this
    way, 1.9 s. (Spark numbers them as it reads them: engines.spark.Sandbox.install.)"""
    columns = ", ".join(f"p.{c}" for c in _kept(lake, pseudonyms))
    numbers = f"select {PERSON}, {KEYED} from {READ_PEOPLE}"
    return (
        f"select {columns}, n.{KEY} from {READ_PEOPLE} p join ({numbers}) n "
        f"on n.{PERSON} = p.{PERSON}"
    )


def _token_sql(dialect: Dialect, number: str) -> str:
    """A person's use token (`engines.base.RunUses`): the first 16 bytes of
    `custodian.central.run_use_token(project key, the run's salt, lake pseudonym)`, of the
    person's `number` (SQL of their 16 bytes: the pseudonym's first 16)."""
    return f"unhex(substr({dialect.sha256(f'{RUN_KEY}.key', number)}, 1, 32))"


def mapping_sql(column: str, tables: Iterable[str], dialect: Dialect) -> str:
    """Every lake pseudonym of a pseudonym column (staff, postcode) in the lake tables read
    (`lake`), with the project's (`project`)."""
    values = " union ".join(
        f"select distinct {column} as lake from {source(t)} where {column} is not null"
        for t in tables
    )
    return (
        f"select v.lake, {project_sql(dialect, 'v.lake')} as project "
        f"from ({values}) v cross join {KEYS}"
    )


# Every person's project pseudonym, by key (dummy data and ready-made views: `made`).
PROJECT_IDS = (
    f"select {project_sql(DIALECTS['duckdb'], 'p.patient')} as project "
    f"from {PEOPLE} p cross join {KEYS} order by p.{KEY}"
)


# A use token for each person read, made with the people (`people_sql`).
USES = f"select token from {READ_PEOPLE}"
