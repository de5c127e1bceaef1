"""Compiling a definition to SQL, for DuckDB and for Spark SQL.

A patient-level query is a base of one row per patient (`v_patients`), with each per-patient
aggregate or picked row computed once in a common table expression keyed by patient and left
joined onto it. Patients are joined by the whole-number key the engines put in `patient_id`
(engines.keyed). A table filtered on its rows alone is read in one pass for all its filters
(`read_<table>`, a flag per filter), the per-patient aggregates of those rows are one grouping
by patient (`reduced_<table>`), and each row picked from them is found by numbering each
patient's rows in order (`picked_<n>`). A frame with other conditions becomes a CTE of its
own; a sorted frame only carries its keys until a row is picked from it.

Measures are computed in one pass over spans of intervals (`spans`); one that uses INTERVAL
in a way spans cannot carry is computed here per patient *and interval* (`measure_by_interval`:
the patient base crossed with the table of intervals, any frame or aggregate whose conditions
mention INTERVAL computed per patient and interval), still one query, not one per interval.

The two dialects differ only in a handful of functions (dates, quoting); everything whose
meaning could drift between engines is written out rather than left to defaults: null ordering,
integer division, division by zero, and tie-breaking when picking a row.

The definition -> SQL boundary is here, in three places, and nowhere else:
  - names: no name a definition gives (a variable, a measure, a group) is ever written into SQL.
    Columns a query makes are named by the compiler (`patient_id`, v0, v1, ... for a dataset's
    variables; interval_start, interval_end, g0, g1, ... numerator, denominator for a measure)
    and the engines give results back under the definition's names by position
    (`engines.base.conform`). Tables and columns read are the schema's own (`schema.TABLES`),
    which nodes accept only by name from that allowlist, and which `Dialect.column` checks again.
  - values: every value from a definition (text, codes, dates, numbers) is written by
    `Dialect.literal`, strings by `Dialect.string` (one per dialect, proven by a Hypothesis test to
    give back any text exactly).
  - before running: `engines.guard.check` reads the SQL text again and refuses anything the
    compiler never writes (a function not on its list, a table it did not make, a second
    statement, a comment), and each engine runs it in a sandbox (engines/duckdb.py, spark.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import ClassVar

from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import BOOL, DATE, FLOAT, INT, PATIENT_ID, STR, TABLES, view_name

INTERVALS = "intervals"


_LAKE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Dialect:
    name = "sql"
    types: ClassVar[dict[str, str]] = {
        BOOL: "boolean",
        INT: "bigint",
        FLOAT: "double",
        STR: "varchar",
        DATE: "date",
    }

    def string(self, text: str) -> str:
        """Any text as a string literal: in standard SQL, a quote inside is written twice, and
        nothing else is special."""
        return "'" + text.replace("'", "''") + "'"

    def column(self, name: str) -> str:
        """A column of the schema's (which may be an SQL keyword: `start`, `date`), quoted; the
        compiler names no other column this way."""
        if name not in SCHEMA_COLUMNS:
            raise ValueError(f"{name!r} is not a column of the schema")
        return self._quoted(name)

    def identifier(self, name: str) -> str:
        """A column of the lake's own tables (the service's names, not a researcher's), quoted:
        lower-case letters, digits and underscores only."""
        if not _LAKE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a lake column's name")
        return self._quoted(name)

    def _quoted(self, name: str) -> str:
        return f'"{name}"'

    def type_of(self, kind: str) -> str:
        return self.types.get(kind, self.types[STR])

    def stand_in(self, kind: str) -> str:
        """A value of the type to stand in for null where a flag beside it says it is null."""
        return {
            BOOL: "false",
            INT: "cast(0 as bigint)",
            FLOAT: "cast(0.0 as double)",
            DATE: "date '0001-01-01'",
        }.get(kind, "''")

    def hmac_sha256(self, message: str, inner: str, outer: str) -> str:
        """HMAC-SHA256 (RFC 2104) of the UTF-8 text `message`, as lowercase hex, where `inner`
        and `outer` are the key's padded blocks (`views.key_table`): the engine keys people
        itself, so no row passes through Python to be keyed, and no key is written into SQL."""
        first = f"unhex(sha256({inner} || encode({message})))"
        return f"sha256({outer} || {first})"

    def sha256(self, first: str, second: str) -> str:
        """SHA-256, as lowercase hex, of the bytes of `first` followed by those of `second`."""
        return f"sha256({first} || {second})"

    def number(self, column: str) -> str:
        """A person's number (lake.tables.PERSON) as its 16 bytes: DuckDB reads it as a UUID,
        which it casts to those bytes, first to last."""
        return f"cast({column} as blob)"

    def struct(self, fields: list[tuple[str, str]]) -> str:
        return "struct_pack(" + ", ".join(f"{name} := {sql}" for name, sql in fields) + ")"

    def literal(self, value: object, kind: str) -> str:
        """Any value a definition holds as SQL: numbers and dates written from the Python
        values (digits, a sign, a point, an exponent, dashes), text by `string`."""
        if value is None:
            return f"cast(null as {self.type_of(kind)})"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"cast({int(value)!r} as bigint)"
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{value!r} is not a number SQL can hold")
            return f"cast({float(value)!r} as double)"
        if isinstance(value, date):
            return f"date '{date(value.year, value.month, value.day).isoformat()}'"
        if not isinstance(value, str):
            raise TypeError(f"a {type(value).__name__} is not a value a definition holds")
        return self.string(value)

    # Operations that could fail on some values (a whole number past 64 bits, a date past the
    # calendar's range) give null instead, on every engine: whether a run fails must not
    # depend on one person's value, or a failure would answer a question about them.

    def arithmetic(self, op: str, a: str, b: str) -> str:
        """Whole-number `a op b` (op: + - *), null where it would overflow."""
        raise NotImplementedError

    def negative(self, a: str) -> str:
        """Whole-number `-a`, null where it would overflow."""
        raise NotImplementedError

    def whole_sum(self, value: str) -> str:
        """The sum of whole numbers as an aggregate (may be followed by `filter (...)`): null,
        by `whole_sum_done`, where it would overflow."""
        return f"sum({value})"

    def whole_sum_done(self, aggregate: str) -> str:
        """A whole-number sum (from `whole_sum`) as a bigint, null where it overflowed."""
        raise NotImplementedError

    def add_days(self, day: str, count: str) -> str:
        raise NotImplementedError

    def add_months(self, day: str, count: str) -> str:
        raise NotImplementedError

    def add_years(self, day: str, count: str) -> str:
        return self.add_months(day, self.arithmetic("*", count, "12"))

    def days_between(self, first: str, second: str) -> str:
        raise NotImplementedError


FIRST_DAY, LAST_DAY = "date '0001-01-01'", "date '9999-12-31'"  # the dates every engine holds
WHOLE_SUM = "whole sum"  # a reduction's cast: a sum of whole numbers, null where it overflows
SPARK_DAYS = (-719_162, 2_932_896)  # 0001-01-01 and 9999-12-31, as days from 1970-01-01
SPARK_MONTHS = (12, 9_999 * 12 + 11)  # January of year 1 and December 9999, as year * 12 + m - 1


class DuckDBDialect(Dialect):
    name = "duckdb"

    def arithmetic(self, op: str, a: str, b: str) -> str:
        return f"try(({a} {op} {b}))"

    def negative(self, a: str) -> str:
        return f"try((-{a}))"

    def whole_sum_done(self, aggregate: str) -> str:
        return f"try_cast({aggregate} as bigint)"  # DuckDB sums into 128 bits

    # Dates within Spark's calendar (0001-01-01 to 9999-12-31) on DuckDB too, which would go
    # further: the same definition gives the same answer on every engine.

    def add_days(self, day: str, count: str) -> str:
        return self._within_calendar(f"try(({day} + cast({count} as integer)))")

    def add_months(self, day: str, count: str) -> str:
        return self._within_calendar(
            f"try(cast({day} + to_months(cast({count} as integer)) as date))"
        )

    def _within_calendar(self, day: str) -> str:
        return f"(case when {day} between {FIRST_DAY} and {LAST_DAY} then {day} end)"

    def days_between(self, first: str, second: str) -> str:
        return f"date_diff('day', {first}, {second})"


class SparkDialect(Dialect):
    name = "spark"
    types: ClassVar[dict[str, str]] = {**Dialect.types, STR: "string"}

    def string(self, text: str) -> str:
        """Any text as a string literal: Spark reads backslash escapes inside quotes (and takes
        '' as two literals side by side), so a backslash and a quote are each escaped by one.
        (Spark's ${...} substitution, which would look inside quotes, is off: engines/spark.py.)"""
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def _quoted(self, name: str) -> str:
        return f"`{name}`"

    def hmac_sha256(self, message: str, inner: str, outer: str) -> str:
        first = f"unhex(sha2(concat({inner}, encode({message}, 'UTF-8')), 256))"
        return f"sha2(concat({outer}, {first}), 256)"

    def sha256(self, first: str, second: str) -> str:
        return f"sha2(concat({first}, {second}), 256)"

    def number(self, column: str) -> str:
        return column  # read as the bytes they are (Delta's schema: binary)

    def struct(self, fields: list[tuple[str, str]]) -> str:
        return (
            "named_struct(" + ", ".join(f"{self.string(name)}, {sql}" for name, sql in fields) + ")"
        )

    def arithmetic(self, op: str, a: str, b: str) -> str:
        name = {"+": "try_add", "-": "try_subtract", "*": "try_multiply"}[op]
        return f"{name}({a}, {b})"

    def negative(self, a: str) -> str:
        return f"try_subtract(cast(0 as bigint), {a})"

    def whole_sum(self, value: str) -> str:
        return f"try_sum({value})"

    def whole_sum_done(self, aggregate: str) -> str:
        return f"cast({aggregate} as bigint)"

    # Spark's dates run from 0001-01-01 to 9999-12-31 and it raises an error past them, so a
    # date is worked out as a day or month number first and made a date only within them.
    # (Each argument is written out more than once: limits.WRITTEN counts it.)

    def add_days(self, day: str, count: str) -> str:
        days = f"try_add(unix_date({day}), try_cast({count} as int))"
        first, last = SPARK_DAYS
        return f"date_from_unix_date(case when {days} between {first} and {last} then {days} end)"

    def add_years(self, day: str, count: str) -> str:
        # Made a whole number of months as an int first: Spark's optimiser folds nested
        # products of constants (count * 10^18 * 12) into one, and their overflow into null
        # for every row.
        return self.add_months(day, f"try_multiply(try_cast({count} as int), 12)")

    def add_months(self, day: str, count: str) -> str:
        months = f"try_add(year({day}) * 12 + month({day}) - 1, try_cast({count} as int))"
        first, last = SPARK_MONTHS
        return (
            f"(case when {months} between {first} and {last} "
            f"then add_months({day}, try_cast({count} as int)) end)"
        )

    def days_between(self, first: str, second: str) -> str:
        return f"datediff({second}, {first})"


DIALECTS: dict[str, Dialect] = {"duckdb": DuckDBDialect(), "spark": SparkDialect()}
SCHEMA_COLUMNS = frozenset(c for table in TABLES.values() for c in table.columns)


@dataclass
class Row:
    """Where an expression is evaluated: `alias` has the columns of `frame` (and a patient id),
    `interval` names the alias carrying interval_start/_end, if any; `joins` collects the
    per-patient CTEs the expression needs joined on."""

    alias: str
    frame: n.Frame
    interval: str | None
    joins: dict[str, bool] = field(default_factory=dict)  # CTE name -> keyed by interval too
    patients: str | None = None  # an alias already joined to v_patients, when frame is not it

    def join_sql(self) -> str:
        parts = []
        for name, by_interval in self.joins.items():
            on = f"{name}.{PATIENT_ID} = {self.alias}.{PATIENT_ID}"
            if by_interval:
                assert self.interval is not None
                on += f" and {name}.interval_start = {self.interval}.interval_start"
            parts.append(f" left join {name} on {on}")
        return "".join(parts)


@dataclass(frozen=True)
class Compiled:
    name: str  # a CTE or view holding the frame's rows (patient_id, columns[, interval])
    by_interval: bool


PATIENTS = n.SelectTable("patients")


@dataclass(frozen=True)
class Query:
    """A query as its common table expressions (name: SQL), each using those before it, and
    the select that uses them."""

    ctes: dict[str, str]
    select: str

    def text(self) -> str:
        listed = ",\n".join(f"{name} as ({sql})" for name, sql in self.ctes.items())
        return (f"with {listed}\n" if self.ctes else "") + self.select


class Compiler:
    def __init__(self, dialect: Dialect, used: dict[str, set[str]], one_pass: bool = True) -> None:
        self.d = dialect
        self.used = used  # {table: columns}: the columns each view has
        # Whether a table's filters on the row alone share one pass over it, and their
        # per-patient aggregates one grouping (off: each its own, as the tests compare).
        self.one_pass = one_pass
        self.ctes: dict[str, str] = {}
        self.frames: dict[n.Frame, Compiled] = {}
        self.aggregates: dict[n.Aggregate, Compiled] = {}
        # table -> {condition: its flag's number}: conditions of rows read in one pass
        self.read_once: dict[str, dict[str, int]] = {}
        # table -> (column, codes): a codelist every condition read in one pass requires
        self.codes_needed: dict[str, list[tuple[str, tuple[str, ...]] | None]] = {}
        self.flags: dict[n.Frame, tuple[str, int]] = {}  # frame read in one pass -> its flag
        # table -> {per-patient aggregate of it: its number}
        self.reductions: dict[str, dict[str, int]] = {}
        self.picks: dict[str, str] = {}  # a row picked from rows read in one pass: its CTE

    def _cte(self, prefix: str, sql: str) -> str:
        name = f"{prefix}_{len(self.ctes)}"
        self.ctes[name] = sql
        return name

    def query(self, select: str) -> Query:
        """The final `select` with the common table expressions it uses."""
        return Query({**self._read_once(), **self._reduced(), **self.ctes}, select)

    def _reduced(self) -> dict[str, str]:
        """For each table read in one pass: every per-patient aggregate of its filtered rows,
        in one grouping by patient (joined to the patients once)."""
        return {
            f"reduced_{table}": f"select {PATIENT_ID}, "
            + ", ".join(f"{sql} as r{i}" for i, sql in enumerate(aggregates))
            + f" from read_{table} s group by {PATIENT_ID}"
            for table, aggregates in self.reductions.items()
        }

    def _reduction(self, frame: n.Frame, aggregate: str, cast: str | None, row: Row) -> str | None:
        """`aggregate` (SQL over the rows as `s`) of a frame read in one pass, as a column of
        its table's reduction joined to `row`; None if the frame is not read in one pass."""
        frame = frame.rows()
        self.frame(frame)
        if frame not in self.flags:
            return None
        table, flag = self.flags[frame]
        aggregates = self.reductions.setdefault(table, {})
        made = f"{aggregate} filter (where f{flag})"
        if cast == WHOLE_SUM:
            made = self.d.whole_sum_done(made)
        elif cast:
            made = f"cast({made} as {cast})"
        number = aggregates.setdefault(made, len(aggregates))
        row.joins[f"reduced_{table}"] = False
        return f"reduced_{table}.r{number}"

    def _reduced_pick(self, frame: n.PickOne, row: Row) -> str | None:
        """The row picked from a frame read in one pass (sorted, not filtered after), as the
        name of a table of one row per patient with the columns read (c0, c1, ..), joined to
        `row`; None otherwise.

        Picked by numbering each patient's rows in order (a window), not by a grouped
        min_by/max_by of structs as the other aggregates of the pass are: a struct kept per
        patient is compared and copied field by field, and at 10 million patients, where the
        groups no longer fit in memory, the grouping took 6 seconds where the window took
        under 2 (at 1 million, 0.38 and 0.19)."""
        source = frame.source
        if not isinstance(source, n.SortBy) or not _of_the_rows(source.keys, source.source):
            return None
        self.frame(source.source)
        if source.source not in self.flags:
            return None
        table, flag = self.flags[source.source]
        columns, ordering = self._ordering(frame, Row("s", source.source, None))
        keys = self._key_fields(ordering, source.source)
        direction = "asc" if frame.position == "first" else "desc"
        order = ", ".join(f"{sql} {direction}" for _, sql in keys)
        chosen = [f"s.{c} as c{i}" for i, c in enumerate(columns)]
        numbered = (
            f"select {', '.join([f's.{PATIENT_ID}', *chosen])}, row_number() over "
            f"(partition by s.{PATIENT_ID} order by {order}) as place "
            f"from read_{table} s where f{flag}"
        )
        kept = ", ".join([PATIENT_ID, *(f"c{i}" for i in range(len(columns)))])
        sql = f"select {kept} from ({numbered}) n where place = 1"
        name = self.picks.get(sql)
        if name is None:
            name = self.picks[sql] = self._cte("picked", sql)
        row.joins[name] = False
        return name

    def _read_once(self) -> dict[str, str]:
        """For each table filtered by conditions on its rows alone: the rows any of them keeps,
        each with a flag per condition, in one pass over the table (reading millions of rows is
        what costs; the rows kept are few)."""
        out = {}
        for table, conditions in self.read_once.items():
            columns = [PATIENT_ID, *sorted(self.used.get(table, ()))]
            flags = [f"{condition} as f{i}" for i, condition in enumerate(conditions)]
            kept = f"({' or '.join(conditions)})"
            # If every condition requires a code from a codelist, a row needs one of their
            # codes: asked first, that rules out most rows at once (and engines match a
            # column against one list of constants quickly).
            needed = self.codes_needed[table]
            if all(needed) and len({column for column, _ in filter(None, needed)}) == 1:
                column = next(column for column, _ in filter(None, needed))
                codes = sorted({code for _, listed in filter(None, needed) for code in listed})
                listed = ", ".join(self.d.string(code) for code in codes)
                kept = f"s.{column} in ({listed}) and {kept}"
            out[f"read_{table}"] = (
                f"select {', '.join([*(f's.{c}' for c in columns), *flags])} "
                f"from {view_name(table)} s where {kept}"
            )
        return out

    # ---- frames --------------------------------------------------------------------------

    def frame(self, frame: n.Frame) -> Compiled:
        if frame not in self.frames:
            self.frames[frame] = self._frame(frame)
        return self.frames[frame]

    def _frame(self, frame: n.Frame) -> Compiled:
        if isinstance(frame, n.SelectTable):
            return Compiled(view_name(frame.name), False)
        if isinstance(frame, n.SortBy):
            return self.frame(frame.source)
        if isinstance(frame, n.Where):
            return self._where(frame)
        assert isinstance(frame, n.PickOne)
        return self._pick(frame)

    def _rows_over(self, source: n.Frame, needs_interval: bool) -> tuple[Row, str]:
        """A row context over the source frame's rows, crossed with the intervals if the
        expressions to be evaluated need them and the rows are not already per interval."""
        base = self.frame(source)
        cross = needs_interval and not base.by_interval
        interval = ("i" if cross else "s") if needs_interval or base.by_interval else None
        row = Row("s", source.rows(), interval)
        from_sql = f"{base.name} s" + (f" cross join {INTERVALS} i" if cross else "")
        return row, from_sql

    def _interval_columns(self, row: Row) -> list[str]:
        if row.interval is None:
            return []
        return [f"{row.interval}.interval_start", f"{row.interval}.interval_end"]

    def _where(self, frame: n.Where) -> Compiled:
        if (
            self.one_pass
            and isinstance(frame.source, n.SelectTable)
            and _of_the_row(frame.condition, frame.source)
        ):
            # A table's filters that need nothing but the row share one pass over it.
            table = frame.source.name
            conditions = self.read_once.setdefault(table, {})
            condition = self.expr(frame.condition, Row("s", frame.source, None))
            if condition not in conditions:
                conditions[condition] = len(conditions)
                self.codes_needed.setdefault(table, []).append(_codes_required(frame.condition))
            flag = conditions[condition]
            self.flags[frame] = (table, flag)
            listed = ", ".join([PATIENT_ID, *sorted(self.used.get(table, ()))])
            return Compiled(
                self._cte("rows", f"select {listed} from read_{table} where f{flag}"), False
            )
        needs = n.uses_interval(frame.condition)
        row, from_sql = self._rows_over(frame.source, needs)
        condition = self.expr(frame.condition, row)
        columns = ["s.*"] + (self._interval_columns(row) if row.interval == "i" else [])
        sql = f"select {', '.join(columns)} from {from_sql}{row.join_sql()} where {condition}"
        return Compiled(self._cte("rows", sql), row.interval is not None)

    def _pick(self, frame: n.PickOne) -> Compiled:
        """One row per patient (and interval): the least (first) or greatest (last) by the
        sort keys, as a grouped min_by/max_by of the row's columns. (A window function does
        the same, but sorts millions of one-row partitions many times slower.)"""
        keys = n.sort_keys(frame.source)
        assert keys is not None
        row, from_sql = self._rows_over(frame.source, any(n.uses_interval(k) for k in keys))
        columns, ordering = self._ordering(frame, row)
        key_fields = self._key_fields(ordering, frame.source)
        groups = [f"s.{PATIENT_ID}", *self._interval_columns(row)]
        by = [g.split(".")[-1] for g in groups]
        if not columns:  # only whether there is a row matters
            grouped = f"select {', '.join(by)} from ({self._rows_sql(row, from_sql)}) s"
            sql = f"{grouped} group by {', '.join(by)}"
            return Compiled(self._cte("picked", sql), row.interval is not None)
        # Most patients have one candidate row: take it with plain aggregates, and compare
        # rows only where there are several (comparing rows is what costs).
        rows = self._cte("candidates", self._rows_sql(row, from_sql, key_fields))
        listed = ", ".join(by)
        single = [f"min({c}) as {self.d.column(c)}" for c in columns]
        counted = self._cte(
            "counted",
            f"select {listed}, count(*) as candidates, {', '.join(single)} "
            f"from {rows} group by {listed}",
        )
        value = self.d.struct([(f"c{i}", self.d.column(c)) for i, c in enumerate(columns)])
        order = self.d.struct([(name, name) for name, _ in key_fields])
        chosen = "min_by" if frame.position == "first" else "max_by"
        several = (
            f"select {', '.join(f'r.{k}' for k in by)}, {chosen}({value}, {order}) as picked "
            f"from {rows} r join (select {listed} from {counted} where candidates > 1) m "
            f"using ({listed}) group by {', '.join(f'r.{k}' for k in by)}"
        )
        unpacked = [f"picked.c{i} as {self.d.column(c)}" for i, c in enumerate(columns)]
        out = ", ".join(self.d.column(c) for c in columns)
        sql = (
            f"select {listed}, {out} from {counted} where candidates = 1 union all "
            f"select {listed}, {', '.join(unpacked)} from ({several}) several"
        )
        return Compiled(self._cte("picked", sql), row.interval is not None)

    def _ordering(self, frame: n.PickOne, row: Row) -> tuple[list[str], list[tuple[str, str]]]:
        """The columns a pick reads, and its order: the sort keys, then those columns (ties
        are broken by every column the definition reads from the table, so whichever tied row
        an engine picks, what the definition sees of it is the same), each key once."""
        keys = n.sort_keys(frame.source)
        assert keys is not None
        table = TABLES[n.table_of(frame.source)]
        columns = sorted(self.used.get(table.name, ()))
        ordering: list[tuple[str, str]] = []
        for sql, kind in [(self.expr(k, row), k.type) for k in keys] + [
            (f"s.{c}", table.columns[c].type) for c in columns
        ]:
            if (sql, kind) not in ordering:  # a key met again can never break a tie
                ordering.append((sql, kind))
        return columns, ordering

    def _key_fields(
        self, ordering: list[tuple[str, str]], frame: n.Frame | None = None
    ) -> list[tuple[str, str]]:
        """Nulls sort first: each key is (is it known?, its value or a stand-in), so the
        comparison never meets a null, the same on every engine; a column the frame's
        conditions already require to be known is itself."""
        present = {f"s.{c}" for c in _never_null(frame)} if frame is not None else set()
        return [
            item
            for i, (sql, kind) in enumerate(ordering)
            for item in (
                [(f"k{i}", sql)]
                if sql in present
                else [
                    (f"k{i}_known", f"({sql} is not null)"),
                    (f"k{i}", f"coalesce({sql}, {self.d.stand_in(kind)})"),
                ]
            )
        ]

    def _rows_sql(self, row: Row, from_sql: str, extra: list[tuple[str, str]] | None = None) -> str:
        """The rows of a frame with their patient (and interval) and the named extras."""
        columns = ["s.*", *(self._interval_columns(row) if row.interval == "i" else [])]
        columns += [f"{sql} as {name}" for name, sql in extra or []]
        return f"select {', '.join(columns)} from {from_sql}{row.join_sql()}"

    # ---- per-patient values --------------------------------------------------------------

    def aggregate(self, node: n.Aggregate) -> Compiled:
        if node not in self.aggregates:
            self.aggregates[node] = self._aggregate(node)
        return self.aggregates[node]

    def _aggregate(self, node: n.Aggregate) -> Compiled:
        if isinstance(node.source, n.Frame):
            base = self.frame(node.source)
            keys = [PATIENT_ID] + (["interval_start"] if base.by_interval else [])
            value = "true" if node.op == "exists" else "count(*)"
            listed = ", ".join(keys)
            sql = f"select {listed}, {value} as v from {base.name} group by {listed}"
            return Compiled(self._cte("agg", sql), base.by_interval)
        series = node.source
        frame = series.domain()
        assert isinstance(frame, n.Frame)
        row, from_sql = self._rows_over(frame, n.uses_interval(series))
        value = self.expr(series, row)
        keys = [f"s.{PATIENT_ID}"] + ([f"{row.interval}.interval_start"] if row.interval else [])
        aggregate, cast = self._of_values(node, value)
        if cast == WHOLE_SUM:
            aggregate = self.d.whole_sum_done(aggregate)
        elif cast:
            aggregate = f"cast({aggregate} as {cast})"
        names = [f"{k} as {k.split('.')[-1]}" for k in keys]
        sql = (
            f"select {', '.join(names)}, {aggregate} as v from {from_sql}{row.join_sql()} "
            f"group by {', '.join(keys)}"
        )
        return Compiled(self._cte("agg", sql), row.interval is not None)

    # ---- expressions ---------------------------------------------------------------------

    def expr(self, node: n.Series, row: Row) -> str:
        if isinstance(node, n.Column):
            return self._column(node, row)
        if isinstance(node, n.Value):
            return self.d.literal(node.value, node.kind)
        if isinstance(node, n.IntervalDate):
            if row.interval is None:
                raise n.problem(node.at, "INTERVAL is only for measures")
            return f"{row.interval}.interval_{node.which}"
        if isinstance(node, n.IsIn):
            listed = ", ".join(self.d.string(c) for c in node.codes)
            return f"({self.expr(node.series, row)} in ({listed}))"
        if isinstance(node, n.Apply):
            return self._apply(node, [self.expr(a, row) for a in node.args])
        if isinstance(node, n.Case):
            whens = " ".join(
                f"when {self.expr(c, row)} then {self._as(v, node.type, row)}"
                for c, v in node.cases
            )
            default = (
                self._as(node.default, node.type, row)
                if node.default
                else self.d.literal(None, node.type)
            )
            return f"(case {whens} else {default} end)"
        assert isinstance(node, n.Aggregate)
        frame = node.source
        if (
            node.op in ("exists", "count")
            and isinstance(frame, n.Frame)
            and frame.is_patient_frame()
        ):
            present = self._present(frame, row)
            if node.op == "exists":
                return present
            return f"(case when {present} then cast(1 as bigint) else cast(0 as bigint) end)"
        value = self._reduced_aggregate(node, row) or self._joined_aggregate(node, row)
        if node.op == "exists":
            return f"coalesce({value}, false)"
        if node.op in ("count", "count_distinct"):
            return f"coalesce({value}, cast(0 as bigint))"
        return value

    def _joined_aggregate(self, node: n.Aggregate, row: Row) -> str:
        compiled = self.aggregate(node)
        row.joins[compiled.name] = compiled.by_interval
        return f"{compiled.name}.v"

    def _reduced_aggregate(self, node: n.Aggregate, row: Row) -> str | None:
        """An aggregate of a frame read in one pass, from its table's reduction."""
        if isinstance(node.source, n.Frame):
            made = "count(*)" if node.op == "count" else "bool_or(true)"
            return self._reduction(node.source, made, None, row)
        frame = node.source.domain()
        if not isinstance(frame, n.Frame) or not _of_the_rows((node.source,), frame):
            return None
        value = self.expr(node.source, Row("s", frame, None))
        return self._reduction(frame, *self._of_values(node, value), row)

    def _of_values(self, node: n.Aggregate, value: str) -> tuple[str, str | None]:
        """A per-patient aggregate of a series' values (SQL over the rows), and the cast its
        result takes: WHOLE_SUM for a sum of whole numbers (null where it would overflow), none
        for a minimum or maximum (of the values' own type)."""
        if node.op == "sum" and node.type == INT:
            return self.d.whole_sum(value), WHOLE_SUM
        made = {
            "minimum": f"min({value})",
            "maximum": f"max({value})",
            "sum": f"sum({value})",
            "mean": f"avg({value})",
            "count_distinct": f"count(distinct {value})",
        }[node.op]
        if node.op in ("minimum", "maximum"):
            return made, None
        return made, {INT: "bigint", FLOAT: "double"}.get(node.type)

    def _as(self, node: n.Series, kind: str, row: Row) -> str:
        """A case branch, cast so that every branch has the case's type. A null branch may
        carry another type (`when(...).then(None)` beside text is a null whole number), which
        would make the engine cast the other branches to it."""
        if isinstance(node, n.Value) and node.value is None:
            return self.d.literal(None, kind)
        sql = self.expr(node, row)
        return f"cast({sql} as {self.d.type_of(kind)})" if kind in (INT, FLOAT) else sql

    def _present(self, frame: n.Frame, row: Row) -> str:
        """Whether a frame of one row per patient has a row for this one: its join, reused
        (picking a row costs a sort; asking whether there is one should not cost another)."""
        if frame.rows() in n.lineage(row.frame) or (row.patients and frame == PATIENTS):
            return "true"
        if isinstance(frame, n.PickOne) and (picked := self._reduced_pick(frame, row)):
            return f"({picked}.{PATIENT_ID} is not null)"
        compiled = self.frame(frame)
        row.joins[compiled.name] = compiled.by_interval
        return f"({compiled.name}.{PATIENT_ID} is not null)"

    def _column(self, node: n.Column, row: Row) -> str:
        if node.frame.rows() in n.lineage(row.frame):
            return f"{row.alias}.{node.name}"
        if row.patients and node.frame == PATIENTS:
            return f"{row.patients}.{node.name}"
        # A per-patient column from another frame: join that frame's one row per patient.
        assert node.domain() == n.PATIENT, "mixed frames are refused when nodes are made"
        if isinstance(node.frame, n.PickOne) and (picked := self._reduced_pick(node.frame, row)):
            columns = sorted(self.used.get(n.table_of(node.frame), ()))
            return f"{picked}.c{columns.index(node.name)}"
        compiled = self.frame(node.frame)
        row.joins[compiled.name] = compiled.by_interval
        return f"{compiled.name}.{node.name}"

    def _apply(self, node: n.Apply, args: list[str]) -> str:
        """An operation on its arguments' SQL. Each is written out once but for those
        `limits.WRITTEN` counts (which bounds the size of what a definition compiles to)."""
        op, d = node.op, self.d
        binary = {
            "eq": "=",
            "ne": "<>",
            "lt": "<",
            "le": "<=",
            "gt": ">",
            "ge": ">=",
            "and": "and",
            "or": "or",
            "add": "+",
            "sub": "-",
            "mul": "*",
        }
        whole = node.type == INT  # decimal numbers do not overflow (they become infinite)
        if op in ("add", "sub", "mul") and whole:
            return d.arithmetic(binary[op], args[0], args[1])
        if op in binary:
            return f"({args[0]} {binary[op]} {args[1]})"
        if op == "not":
            return f"(not {args[0]})"
        if op == "neg":
            return d.negative(args[0]) if whole else f"(-{args[0]})"
        if op == "is_null":
            return f"({args[0]} is null)"
        if op == "is_not_null":
            return f"({args[0]} is not null)"
        if op == "div":  # null, not an error, for division by zero (every argument once)
            numerator, denominator = args
            return f"(cast({numerator} as double) / nullif({denominator}, 0))"
        if op == "add_days":
            return d.add_days(args[0], args[1])
        if op == "add_months":
            return d.add_months(args[0], args[1])
        if op == "add_years":
            return d.add_years(args[0], args[1])
        if op == "days_between":
            return f"cast({d.days_between(args[0], args[1])} as bigint)"
        if op == "months_between":
            a, b = args
            return (
                f"cast(((year({b}) - year({a})) * 12 + month({b}) - month({a}) - "
                f"(case when day({b}) < day({a}) then 1 else 0 end)) as bigint)"
            )
        if op == "years_between":
            a, b = args
            return (
                f"cast((year({b}) - year({a}) - (case when month({b}) < month({a}) or "
                f"(month({b}) = month({a}) and day({b}) < day({a})) then 1 else 0 end)) as bigint)"
            )
        if op in ("year", "month"):
            return f"cast({op}({args[0]}) as bigint)"
        assert op == "coalesce"
        return f"coalesce({args[0]}, {args[1]})"


def _of_the_row(condition: n.Node, table: n.SelectTable) -> bool:
    """Whether a condition on a table's rows needs nothing but the row: no per-patient value,
    no INTERVAL."""

    def work_out() -> bool:
        if isinstance(condition, (n.Aggregate, n.IntervalDate)):
            return False
        if isinstance(condition, n.Column):
            return condition.frame == table
        return all(_of_the_row(child, table) for child in n.children(condition))

    return n.remembered_for(condition, "of_the_row", table, work_out)


def _of_the_rows(values: tuple[n.Node, ...], frame: n.Frame) -> bool:
    """Whether values on a frame's rows need nothing but the row (its table's columns)."""

    def one(node: n.Node) -> bool:
        def work_out() -> bool:
            if isinstance(node, (n.Aggregate, n.IntervalDate)):
                return False
            if isinstance(node, n.Column) and node.frame.rows() not in n.lineage(frame):
                return False
            return _of_the_rows(tuple(n.children(node)), frame)

        return n.remembered_for(node, "of_the_rows", frame, work_out)

    return all(one(value) for value in values)


def _never_null(frame: n.Frame) -> set[str]:
    """Columns of a frame's table that are known in all its rows: its conditions compare them
    (a comparison with an unknown value holds for no row) or ask that they are known."""
    found: set[str] = set()
    while isinstance(frame, (n.Where, n.SortBy)):
        if isinstance(frame, n.Where):
            for factor in n.conjuncts(frame.condition):
                if isinstance(factor, n.Apply) and factor.op in (
                    "eq", "lt", "le", "gt", "ge", "is_not_null"
                ):  # fmt: skip
                    found |= {
                        a.name for a in factor.args if isinstance(a, n.Column) and _own(a, frame)
                    }
                elif (
                    isinstance(factor, n.IsIn)
                    and isinstance(factor.series, n.Column)
                    and _own(factor.series, frame)
                ):
                    found.add(factor.series.name)
        frame = frame.source
    return found


def _own(column: n.Column, frame: n.Where) -> bool:
    """Whether a column is one of the rows a `where` filters."""
    return column.frame.rows() in n.lineage(frame.source)


def _codes_required(condition: n.Series) -> tuple[str, tuple[str, ...]] | None:
    """(column, codes) if the condition holds only for rows with one of the codes in that
    column: it is `column.is_in(codes) & ...`."""
    for factor in n.conjuncts(condition):
        if isinstance(factor, n.IsIn) and isinstance(factor.series, n.Column):
            return factor.series.name, factor.codes
    return None


# ---- whole queries ---------------------------------------------------------------------------


def dataset_sql(definition: n.Definition, dialect: Dialect, one_pass: bool = True) -> str:
    return dataset_query(definition, dialect, one_pass).text()


def dataset_query(definition: n.Definition, dialect: Dialect, one_pass: bool = True) -> Query:
    """One row per patient in the population: patient_id, then each variable (v0, v1, ...)."""
    if definition.population is None:
        raise n.DefinitionError("a dataset needs `define_population`")
    compiler = Compiler(dialect, n.columns_used(definition), one_pass)
    row = Row("p", PATIENTS, None)
    population = compiler.expr(definition.population, row)
    columns = [f"p.{PATIENT_ID} as {PATIENT_ID}"] + [
        f"{compiler.expr(series, row)} as v{i}"
        for i, (_, series) in enumerate(definition.variables)
    ]
    return compiler.query(
        f"select {', '.join(columns)} from {view_name('patients')} p"
        f"{row.join_sql()} where coalesce({population}, false)"
    )


def measure_sql(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> str:
    """numerator and denominator summed over the patients counted in the denominator, for each
    interval and group, in one pass over the data: over spans of intervals (`spans`) where the
    measure allows, otherwise per patient and interval. Its columns: interval_start,
    interval_end, g0, g1, ... (each group), numerator, denominator."""
    return measure_query(definition, measure, dialect).text()


def measure_query(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> Query:
    """measure_sql, as its parts."""
    from gpdpr.tre.engines import spans  # it builds on this module's compiler

    try:
        return spans.measure_query(definition, measure, dialect)
    except spans.NotSpannable:
        return measure_by_interval(definition, measure, dialect)


def measure_by_interval(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> Query:
    """The measure computed per patient and interval: the intervals crossed with the patients,
    or with the rows of the per-interval frame the denominator needs a row of."""
    compiler = Compiler(dialect, n.columns_used(definition))
    base = _measure_base(measure)
    patients = f"{view_name('patients')} p"
    if base is None:
        row = Row("p", PATIENTS, "i")
        from_sql = f"{patients} cross join {INTERVALS} i"
    else:
        # Only patient-interval pairs where the denominator can be non-zero count; when it
        # requires a row of a per-patient-and-interval frame, those rows are the pairs.
        compiled = compiler.frame(base)
        assert compiled.by_interval
        row = Row("b", base, "b", patients="p")
        from_sql = f"{compiled.name} b join {patients} on p.{PATIENT_ID} = b.{PATIENT_ID}"
    numerator = as_count(compiler.expr(measure.numerator, row), measure.numerator.type)
    denominator = as_count(compiler.expr(measure.denominator, row), measure.denominator.type)
    groups = [
        f"{compiler.expr(series, row)} as {group}"
        for group, (_, series) in zip(group_names(measure), measure.group_by, strict=True)
    ]
    per_patient = (
        f"select {row.interval}.interval_start, {row.interval}.interval_end, "
        + "".join(f"{g}, " for g in groups)
        + f"{numerator} as numerator, {denominator} as denominator "
        f"from {from_sql}{row.join_sql()}"
    )
    keys = ["interval_start", "interval_end", *group_names(measure)]
    return compiler.query(
        f"select {', '.join(keys)}, "
        f"cast(sum(numerator) as bigint) as numerator, "
        f"cast(sum(denominator) as bigint) as denominator "
        f"from ({per_patient}) per_patient where denominator > 0 "
        f"group by {', '.join(keys)} order by {_ordered(keys)}"
    )


def group_names(measure: n.Measure) -> list[str]:
    """The compiler's names for a measure's groups, in order (never the definition's)."""
    return [f"g{i}" for i in range(len(measure.group_by))]


def _measure_base(measure: n.Measure) -> n.Frame | None:
    """A frame of one row per patient and interval that the denominator needs a row of (it is
    `frame.exists_for_patient() & ...`), if there is one."""
    for factor in n.conjuncts(measure.denominator):
        if (
            isinstance(factor, n.Aggregate)
            and factor.op in ("exists", "count")
            and isinstance(factor.source, n.Frame)
            and factor.source.is_patient_frame()
            and n.uses_interval(factor.source)
        ):
            return factor.source
    return None


def _ordered(keys: list[str]) -> str:
    """Rows in the order of `keys`, a group with no value (null) after the others, on every
    engine (DuckDB puts nulls last by default, Spark first)."""
    return ", ".join(f"{key} asc nulls last" for key in keys)


def as_count(sql: str, kind: str) -> str:
    if kind == BOOL:
        return f"(case when {sql} then 1 else 0 end)"
    return f"coalesce(cast({sql} as bigint), 0)"


def interval_rows(intervals: n.Intervals) -> list[tuple[date, date]]:
    """(first day, last day) of each interval."""
    from gpdpr.governance.agreements import add_months  # one calendar rule for the service

    out = []
    for k in range(intervals.count):
        if intervals.unit == "months":
            start = add_months(intervals.start, k)
            end = add_months(intervals.start, k + 1)
        else:
            start = date.fromordinal(intervals.start.toordinal() + 7 * k)
            end = date.fromordinal(start.toordinal() + 7)
        out.append((start, date.fromordinal(end.toordinal() - 1)))
    return out
