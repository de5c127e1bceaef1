"""Compiling a definition to SQL, for DuckDB and for Spark SQL.

A patient-level query is a base of one row per patient (`v_patients`), with each per-patient
aggregate or picked row computed once in a common table expression keyed by patient and left
joined onto it. A frame with conditions becomes a CTE too; a sorted frame only carries its keys
until a row is picked from it.

Measures are computed in one pass: the patient base is crossed with the table of intervals, and
any frame or aggregate whose conditions mention INTERVAL is computed per patient *and interval*
(its rows joined to the intervals they fall in), so a five-year monthly measure is one query over
the data, not sixty.

The two dialects differ only in a handful of functions (dates, quoting, median); everything
whose meaning could drift between engines is written out rather than left to defaults: null
ordering, integer division, division by zero, and tie-breaking when picking a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import ClassVar

from gpdpr.tre import nodes as n
from gpdpr.tre.schema import BOOL, DATE, FLOAT, INT, PATIENT_ID, STR, view_name

INTERVALS = "intervals"
DATASET = "dataset"


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
        return "'" + text.replace("'", "''") + "'"

    def type_of(self, kind: str) -> str:
        return self.types.get(kind, self.types[STR])

    def literal(self, value: object, kind: str) -> str:
        if value is None:
            return f"cast(null as {self.type_of(kind)})"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"cast({value} as bigint)"
        if isinstance(value, float):
            return f"cast({value!r} as double)"
        if isinstance(value, date):
            return f"date '{value.isoformat()}'"
        assert isinstance(value, str)
        return self.string(value)

    def add_days(self, day: str, count: str) -> str:
        raise NotImplementedError

    def add_months(self, day: str, count: str) -> str:
        raise NotImplementedError

    def days_between(self, first: str, second: str) -> str:
        raise NotImplementedError

    def median(self, value: str) -> str:
        raise NotImplementedError


class DuckDBDialect(Dialect):
    name = "duckdb"

    def add_days(self, day: str, count: str) -> str:
        return f"({day} + cast({count} as integer))"

    def add_months(self, day: str, count: str) -> str:
        return f"cast({day} + to_months(cast({count} as integer)) as date)"

    def days_between(self, first: str, second: str) -> str:
        return f"date_diff('day', {first}, {second})"

    def median(self, value: str) -> str:
        return f"quantile_cont({value}, 0.5)"


class SparkDialect(Dialect):
    name = "spark"
    types: ClassVar[dict[str, str]] = {**Dialect.types, STR: "string"}

    def string(self, text: str) -> str:
        # Spark reads backslash escapes inside quotes, and takes '' as two adjacent literals.
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def add_days(self, day: str, count: str) -> str:
        return f"date_add({day}, cast({count} as int))"

    def add_months(self, day: str, count: str) -> str:
        return f"add_months({day}, cast({count} as int))"

    def days_between(self, first: str, second: str) -> str:
        return f"datediff({second}, {first})"

    def median(self, value: str) -> str:
        return f"percentile({value}, 0.5)"


DIALECTS: dict[str, Dialect] = {"duckdb": DuckDBDialect(), "spark": SparkDialect()}


@dataclass
class Row:
    """Where an expression is evaluated: `alias` has the columns of `frame` (and a patient id),
    `interval` names the alias carrying interval_start/_end, if any; `joins` collects the
    per-patient CTEs the expression needs joined on."""

    alias: str
    frame: n.Frame
    interval: str | None
    joins: dict[str, bool] = field(default_factory=dict)  # CTE name -> keyed by interval too

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


class Compiler:
    def __init__(self, dialect: Dialect, used: dict[str, set[str]]) -> None:
        self.d = dialect
        self.used = used  # {table: columns}: the columns each view has
        self.ctes: dict[str, str] = {}
        self.frames: dict[n.Frame, Compiled] = {}
        self.aggregates: dict[n.Aggregate, Compiled] = {}

    def _cte(self, prefix: str, sql: str) -> str:
        name = f"{prefix}_{len(self.ctes)}"
        self.ctes[name] = sql
        return name

    def with_clause(self) -> str:
        if not self.ctes:
            return ""
        return "with " + ",\n".join(f"{name} as ({sql})" for name, sql in self.ctes.items()) + "\n"

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
        needs = n.uses_interval(frame.condition)
        row, from_sql = self._rows_over(frame.source, needs)
        condition = self.expr(frame.condition, row)
        columns = ["s.*"] + (self._interval_columns(row) if row.interval == "i" else [])
        sql = f"select {', '.join(columns)} from {from_sql}{row.join_sql()} where {condition}"
        return Compiled(self._cte("rows", sql), row.interval is not None)

    def _pick(self, frame: n.PickOne) -> Compiled:
        keys = n.sort_keys(frame.source)
        assert keys is not None
        needs = any(n.uses_interval(k) for k in keys)
        row, from_sql = self._rows_over(frame.source, needs)
        descending = frame.position == "last"
        order = [self._order(self.expr(k, row), descending) for k in keys]
        # Ties are broken by every column the definition reads from the table, so whichever
        # tied row an engine picks, what the definition sees of it is the same.
        tied = sorted(self.used.get(n.table_of(frame.source), ()))
        order += [self._order(f"s.{c}", descending) for c in tied]
        partition = [f"s.{PATIENT_ID}"] + (
            [f"{row.interval}.interval_start"] if row.interval else []
        )
        columns = ["s.*"] + (self._interval_columns(row) if row.interval == "i" else [])
        numbered = (
            f"select {', '.join(columns)}, row_number() over (partition by "
            f"{', '.join(partition)} order by {', '.join(order)}) as pick "
            f"from {from_sql}{row.join_sql()}"
        )
        sql = f"select * from ({numbered}) numbered where pick = 1"
        return Compiled(self._cte("picked", sql), row.interval is not None)

    @staticmethod
    def _order(sql: str, descending: bool) -> str:
        # Nulls sort first, so `last` (the order reversed) puts them last: the same on every engine.
        return f"{sql} desc nulls last" if descending else f"{sql} asc nulls first"

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
        aggregate = {
            "minimum": f"min({value})",
            "maximum": f"max({value})",
            "sum": f"sum({value})",
            "mean": f"avg({value})",
            "count_distinct": f"count(distinct {value})",
        }[node.op]
        cast = {INT: "bigint", FLOAT: "double"}.get(node.type)
        if cast and node.op != "minimum" and node.op != "maximum":
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
        compiled = self.aggregate(node)
        row.joins[compiled.name] = compiled.by_interval
        value = f"{compiled.name}.v"
        if node.op == "exists":
            return f"coalesce({value}, false)"
        if node.op in ("count", "count_distinct"):
            return f"coalesce({value}, cast(0 as bigint))"
        return value

    def _as(self, node: n.Series, kind: str, row: Row) -> str:
        """A case branch, cast so that every branch has the case's type."""
        sql = self.expr(node, row)
        return f"cast({sql} as {self.d.type_of(kind)})" if kind in (INT, FLOAT) else sql

    def _column(self, node: n.Column, row: Row) -> str:
        if node.frame.rows() in n.lineage(row.frame):
            return f"{row.alias}.{node.name}"
        # A per-patient column from another frame: join that frame's one row per patient.
        assert node.domain() == n.PATIENT, "mixed frames are refused when nodes are made"
        compiled = self.frame(node.frame)
        row.joins[compiled.name] = compiled.by_interval
        return f"{compiled.name}.{node.name}"

    def _apply(self, node: n.Apply, args: list[str]) -> str:
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
        if op in binary:
            return f"({args[0]} {binary[op]} {args[1]})"
        if op == "not":
            return f"(not {args[0]})"
        if op == "neg":
            return f"(-{args[0]})"
        if op == "is_null":
            return f"({args[0]} is null)"
        if op == "is_not_null":
            return f"({args[0]} is not null)"
        if op == "div":
            numerator, denominator = args
            return (
                f"(case when {denominator} = 0 then null "
                f"else cast({numerator} as double) / {denominator} end)"
            )
        if op == "add_days":
            return d.add_days(args[0], args[1])
        if op == "add_months":
            return d.add_months(args[0], args[1])
        if op == "add_years":
            return d.add_months(args[0], f"({args[1]}) * 12")
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


# ---- whole queries ---------------------------------------------------------------------------


def dataset_sql(definition: n.Definition, dialect: Dialect) -> str:
    """One row per patient in the population: patient_id and each variable."""
    if definition.population is None:
        raise n.DefinitionError("a dataset needs `define_population`")
    compiler = Compiler(dialect, n.columns_used(definition))
    row = Row("p", PATIENTS, None)
    population = compiler.expr(definition.population, row)
    columns = [f"p.{PATIENT_ID} as {PATIENT_ID}"] + [
        f"{compiler.expr(series, row)} as {name}" for name, series in definition.variables
    ]
    return (
        f"{compiler.with_clause()}select {', '.join(columns)} from {view_name('patients')} p"
        f"{row.join_sql()} where coalesce({population}, false)"
    )


def measure_sql(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> str:
    """numerator and denominator summed over the patients counted in the denominator, for each
    interval and group, in one pass over the data."""
    compiler = Compiler(dialect, n.columns_used(definition))
    row = Row("p", PATIENTS, "i")
    numerator = _as_count(compiler.expr(measure.numerator, row), measure.numerator.type)
    denominator = _as_count(compiler.expr(measure.denominator, row), measure.denominator.type)
    groups = [f"{compiler.expr(series, row)} as {name}" for name, series in measure.group_by]
    per_patient = (
        "select i.interval_start, i.interval_end, "
        + "".join(f"{g}, " for g in groups)
        + f"{numerator} as numerator, {denominator} as denominator "
        f"from {view_name('patients')} p cross join {INTERVALS} i{row.join_sql()}"
    )
    keys = ["interval_start", "interval_end", *(name for name, _ in measure.group_by)]
    return (
        f"{compiler.with_clause()}select {', '.join(keys)}, "
        f"cast(sum(numerator) as bigint) as numerator, "
        f"cast(sum(denominator) as bigint) as denominator "
        f"from ({per_patient}) per_patient where denominator > 0 "
        f"group by {', '.join(keys)} order by {', '.join(keys)}"
    )


def _as_count(sql: str, kind: str) -> str:
    if kind == BOOL:
        return f"(case when {sql} then 1 else 0 end)"
    return f"coalesce(cast({sql} as bigint), 0)"


def table_sql(table: n.AggregateTable, dialect: Dialect) -> str:
    """Patients (and statistics) per group of a dataset already computed as `dataset`."""
    columns = [*table.by, "count(*) as patients"]
    for variable, statistic in table.statistics:
        value = f"cast({variable} as double)"
        made = {
            "mean": f"avg({value})",
            "median": dialect.median(value),
            "sd": f"stddev_samp({value})",
        }[statistic]
        columns.append(f"{made} as {variable}_{statistic}")
    keys = ", ".join(table.by)
    return f"select {', '.join(columns)} from {DATASET} group by {keys} order by {keys}"


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
