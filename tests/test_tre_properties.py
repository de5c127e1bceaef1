"""DuckDB and Spark give the same answer to any definition, on any data; a measure computed over
spans of intervals gives the same answer as computed per patient and interval; and a dataset
whose tables are read in one pass the same as one reading them filter by filter.

Hypothesis makes small project views (nulls, ties, duplicate rows, dates across years, month
ends and leap days, patients with no rows and rows of no patient) and random query graphs: frames
filtered and filtered again, sorted and picked from, per-patient aggregates of them, comparisons,
logic, arithmetic, case, coalesce, codelists and date arithmetic, nested a few levels deep, in
datasets with aggregate tables and in measures over monthly and weekly intervals. Each definition
goes through its JSON form and runs on both engines; the answers must be identical (rows sorted
by patient; decimals within a small relative tolerance, since engines may add in another order).

Spark takes about a second a query here, so the number of examples is modest: each example is a
whole definition, with several variables, a table and a measure, to see much per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpdpr.tre.engines import spans, sql
from gpdpr.tre.engines.base import (
    Engine,
    conform,
    dataset_schema,
    intervals_table,
    keyed,
    measure_schema,
)
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import BOOL, DATE, DMD, FLOAT, INT, SNOMED, STR
from tre_data import differences, engine, make_views, results_differences, through_json

Draw = Callable[[st.SearchStrategy[Any]], Any]
D = date

# ---- data ------------------------------------------------------------------------------------

DATES = [
    D(1999, 12, 31), D(2000, 2, 29), D(2019, 1, 31), D(2020, 2, 29), D(2020, 3, 1),
    D(2021, 12, 31), D(2022, 1, 1), D(2023, 6, 15), D(2024, 1, 31), D(2024, 2, 29),
    D(2024, 3, 31), D(2025, 1, 1),
]  # fmt: skip
BIRTHS = [D(1940, 1, 1), D(1980, 2, 1), D(2000, 2, 1), D(2010, 12, 1), D(2024, 2, 1)]
# Decimals whose sums and products are exact, so that engines adding in another order agree
# to the last bit (divisions and means are rounded once, the same everywhere).
FLOATS = [-1.5, 0.0, 0.25, 0.5, 2.0, 3.25, 10.0]
INTS = [-3, 0, 1, 2, 5, 9, 12]
TEXT = ["", "A", "B", "a", "é", "Z z", "O'N", "x\\y", "${env:HOME}"]
SNOMEDS = ["38341003", "59621000", "44054006", "195967001"]
DMDS = ["39716811000001100", "39716611000001104"]
PRACTICES = ["A", "B", "C"]
STARTS = [D(2019, 12, 1), D(2020, 1, 31), D(2024, 1, 29), D(2024, 2, 1)]


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy, strategy)


@st.composite
def projects(draw: Draw) -> dict[str, pa.Table]:
    """Views of up to six patients and a dozen rows a table."""
    ids = [f"p{i}" for i in range(draw(st.integers(0, 6)))]
    people = [
        {
            "patient_id": pid,
            "sex": draw(maybe(st.sampled_from(["F", "M", "U"]))),
            "date_of_birth": draw(maybe(st.sampled_from(BIRTHS))),
            "imd_decile": draw(maybe(st.sampled_from(INTS))),
            "lsoa_code": draw(maybe(st.sampled_from(TEXT))),
            "linkable": draw(maybe(st.booleans())),
        }
        for pid in ids
    ]
    someone = st.sampled_from([*ids, "nobody"]) if ids else st.just("nobody")

    def rows(columns: dict[str, st.SearchStrategy[Any]], most: int) -> list[dict[str, Any]]:
        row = st.fixed_dictionaries({"patient_id": someone, **columns})
        made: list[dict[str, Any]] = draw(st.lists(row, max_size=most))
        if made and draw(st.booleans()):  # the same row again
            made += draw(st.lists(st.sampled_from(made), min_size=1, max_size=3))
        return made

    day = maybe(st.sampled_from(DATES))
    return make_views(
        patients=people,
        clinical_events=rows(
            {
                "code": maybe(st.sampled_from(SNOMEDS)),
                "effective_date": day,
                "value": maybe(st.sampled_from(FLOATS)),
                "unit": maybe(st.sampled_from(TEXT)),
            },
            12,
        ),
        medications=rows(
            {
                "code": maybe(st.sampled_from(DMDS)),
                "issue_date": day,
                "quantity": maybe(st.sampled_from(FLOATS)),
                "course": maybe(st.sampled_from(["acute", "repeat"])),
            },
            8,
        ),
        practice_registrations=rows(
            {
                "start_date": day,
                "end_date": maybe(st.sampled_from(DATES)),
                "practice": maybe(st.sampled_from(PRACTICES)),
            },
            6,
        ),
        appointments=rows(
            {
                "start": day,
                "duration_minutes": maybe(st.sampled_from(INTS)),
                "status": maybe(st.sampled_from(["fulfilled", "noshow"])),
            },
            6,
        ),
    )


# ---- query graphs ----------------------------------------------------------------------------

COLUMNS: dict[str, dict[str, list[str]]] = {
    "patients": {
        INT: ["imd_decile"],
        DATE: ["date_of_birth"],
        STR: ["sex", "lsoa_code"],
        BOOL: ["linkable"],
    },
    "clinical_events": {
        FLOAT: ["value"],
        DATE: ["effective_date"],
        STR: ["unit"],
        SNOMED: ["code"],
    },
    "medications": {FLOAT: ["quantity"], DATE: ["issue_date"], STR: ["course"], DMD: ["code"]},
    "practice_registrations": {DATE: ["start_date", "end_date"], STR: ["practice"]},
    "appointments": {INT: ["duration_minutes"], DATE: ["start"], STR: ["status"]},
}
EVENT_TABLES = [t for t in COLUMNS if t != "patients"]
LITERALS: dict[str, list[Any]] = {
    BOOL: [True, False],
    INT: INTS,
    FLOAT: FLOATS,
    DATE: DATES,
    STR: TEXT,
    SNOMED: SNOMEDS,
    DMD: DMDS,
}
KINDS = [BOOL, INT, FLOAT, DATE, STR]
ORDERED = [INT, FLOAT, DATE, STR]
SMALL = {
    "add_days": list(range(-400, 401)),
    "add_months": list(range(-30, 31)),
    "add_years": list(range(-5, 6)),
}


def table_with(kind: str, tables: list[str]) -> list[str]:
    return [t for t in tables if COLUMNS[t].get(kind)]


class Graphs:
    """Random, well-typed query graph nodes. `rows` is the frame a series is evaluated over
    (None: one value per patient); `interval` whether INTERVAL may be used (in measures)."""

    def __init__(self, draw: Draw, interval: bool) -> None:
        self.draw = draw
        self.interval = interval

    def pick(self, options: list[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def chance(self, p: float) -> bool:
        return bool(self.draw(st.floats(0, 1)) < p)

    # ---- leaves ----

    def literal(self, kind: str, null: bool = True) -> n.Value:
        if null and self.chance(0.1):
            return n.Value(None, kind)
        value = self.pick(LITERALS[kind])
        return n.Value(value, kind)

    def column(self, kind: str, rows: n.Frame) -> n.Column | None:
        table = n.table_of(rows)
        names = COLUMNS[table].get(kind)
        if not names:
            return None
        # A column of the frame itself, or of the table it filters (the same rows); a frame of
        # one row per patient picked from many has only its own.
        own = rows.is_patient_frame() or self.chance(0.7)
        frame = rows if own else n.SelectTable(table)
        return n.Column(frame, self.pick(names))

    # ---- frames ----

    def frame(self, table: str, depth: int) -> n.Frame:
        """A table, perhaps filtered (more than once)."""
        frame: n.Frame = n.SelectTable(table)
        for _ in range(self.pick([0, 1, 1, 2]) if depth > 0 else 0):
            frame = n.Where(frame, self.series(BOOL, depth - 1, frame))
        return frame

    def row_series(self, kind: str, depth: int, rows: n.Frame) -> n.Series:
        """A series with a value per row of `rows` (not one per patient)."""
        series = self.series(kind, depth, rows)
        if series.domain() == n.PATIENT:
            column = self.column(kind, rows)
            assert column is not None
            return column
        return series

    def picked(self, table: str, depth: int) -> n.Frame:
        frame = self.frame(table, depth)
        keys = tuple(
            self.row_series(kind, min(depth, 1), frame)
            for kind in self.draw(
                st.lists(
                    st.sampled_from([k for k in ORDERED if COLUMNS[table].get(k)]),
                    min_size=1,
                    max_size=2,
                )
            )
        )
        source: n.Frame = n.SortBy(frame, keys)
        if depth > 0 and self.chance(0.2):
            source = n.Where(source, self.series(BOOL, depth - 1, frame))
        return n.PickOne(source, self.pick(["first", "last"]))

    # ---- series ----

    def series(self, kind: str, depth: int, rows: n.Frame | None = None) -> n.Series:
        makers: list[Callable[[], n.Series | None]] = [
            lambda: self.literal(kind),
            lambda: self.column(kind, n.SelectTable("patients")),
        ]
        if rows is not None:
            makers += [lambda: self.column(kind, rows)] * 4
        if kind == DATE and self.interval:
            makers.append(lambda: n.IntervalDate(self.pick(["start", "end"])))
        if depth > 0:
            makers += [lambda: self.aggregate(kind, depth - 1)] * 2
            makers += [lambda: self.picked_column(kind, depth - 1)]
            makers += [lambda: self.operation(kind, depth - 1, rows)] * 3
            makers += [lambda: self.case(kind, depth - 1, rows)]
        while True:
            made: n.Series | None = self.pick(makers)()
            if made is not None and made.type == kind:
                return made

    def aggregate(self, kind: str, depth: int) -> n.Series | None:
        if kind == BOOL:
            table = self.pick([*EVENT_TABLES, "patients"])
            if table != "patients" and self.chance(0.2):  # a row picked, perhaps filtered
                picked = self.picked(table, depth)
                if self.chance(0.5):
                    picked = n.Where(picked, self.series(BOOL, depth, picked))
                return n.Aggregate("exists", picked)
            return n.Aggregate("exists", self.frame(table, depth))
        if kind == INT:
            op = self.pick(["count", "count", "count_distinct", "sum", "minimum"])
            table = self.pick([*EVENT_TABLES, "patients"] if op == "count" else EVENT_TABLES)
            frame = self.frame(table, depth)
            if op == "count":
                return n.Aggregate("count", frame)
            if op == "count_distinct":
                of = self.pick([k for k in ORDERED if COLUMNS[table].get(k)])
                return n.Aggregate("count_distinct", self.row_series(of, depth, frame))
            if not COLUMNS[table].get(INT):
                return None
            return n.Aggregate(op, self.row_series(INT, depth, frame))
        if kind == FLOAT:
            op = self.pick(["mean", "sum", "minimum", "maximum"])
            table = self.pick(EVENT_TABLES)
            frame = self.frame(table, depth)
            of = self.pick([k for k in (INT, FLOAT) if COLUMNS[table].get(k)] or [None])
            if of is None or (op != "mean" and of != FLOAT):
                return None
            return n.Aggregate(op, self.row_series(of, depth, frame))
        if kind in (DATE, STR):
            table = self.pick(EVENT_TABLES)
            frame = self.frame(table, depth)
            return n.Aggregate(
                self.pick(["minimum", "maximum"]), self.row_series(kind, depth, frame)
            )
        return None

    def picked_column(self, kind: str, depth: int) -> n.Series | None:
        tables = table_with(kind, EVENT_TABLES)
        if not tables:
            return None
        table = self.pick(tables)
        return n.Column(self.picked(table, depth), self.pick(COLUMNS[table][kind]))

    def operation(self, kind: str, depth: int, rows: n.Frame | None) -> n.Series | None:
        def sub(of: str) -> n.Series:
            return self.series(of, depth, rows)

        if kind == BOOL:
            choice = self.pick(["compare", "compare", "logic", "not", "null", "is_in"])
            if choice == "compare":
                of = self.pick([*ORDERED, BOOL])
                op = self.pick(["eq", "ne"] if of == BOOL else ["eq", "ne", "lt", "le", "gt", "ge"])
                other = FLOAT if of == INT and self.chance(0.3) else of
                return n.Apply(op, (sub(of), sub(other)))
            if choice == "logic":
                return n.Apply(self.pick(["and", "or"]), (sub(BOOL), sub(BOOL)))
            if choice == "not":
                return n.Apply("not", (sub(BOOL),))
            if choice == "null":
                return n.Apply(self.pick(["is_null", "is_not_null"]), (sub(self.pick(KINDS)),))
            return self.is_in(depth, rows)
        if kind == INT:
            choice = self.pick(["add", "sub", "mul", "neg", "between", "part", "coalesce"])
            if choice in ("add", "sub"):
                return n.Apply(choice, (sub(INT), sub(INT)))
            if choice == "mul":  # by a small number, so that nothing overflows
                return n.Apply("mul", (sub(INT), n.Value(self.pick([-2, 0, 1, 3]), INT)))
            if choice == "neg":
                return n.Apply("neg", (sub(INT),))
            if choice == "between":
                op = self.pick(["days_between", "months_between", "years_between"])
                return n.Apply(op, (sub(DATE), sub(DATE)))
            if choice == "part":
                return n.Apply(self.pick(["year", "month"]), (sub(DATE),))
            return n.Apply("coalesce", (sub(INT), sub(INT)))
        if kind == FLOAT:
            choice = self.pick(["add", "sub", "mul", "div", "div", "neg", "coalesce"])
            first, second = (
                (FLOAT, self.pick([INT, FLOAT]))
                if self.chance(0.5)
                else (self.pick([INT, FLOAT]), FLOAT)
            )
            if choice in ("add", "sub", "coalesce"):
                return n.Apply(choice, (sub(first), sub(second)))
            if choice == "mul":
                return n.Apply("mul", (sub(FLOAT), n.Value(self.pick([-2.0, 0.5, 3]), FLOAT)))
            if choice == "div":
                return n.Apply("div", (sub(self.pick([INT, FLOAT])), sub(self.pick([INT, FLOAT]))))
            return n.Apply("neg", (sub(FLOAT),))
        if kind == DATE:
            choice = self.pick(["add_days", "add_months", "add_years", "coalesce"])
            if choice == "coalesce":
                return n.Apply("coalesce", (sub(DATE), sub(DATE)))
            amount: n.Series = n.Value(self.pick(SMALL[choice]), INT)
            if self.chance(0.3):  # a number of the data's (small ones only)
                source = rows if rows is not None and n.table_of(rows) == "appointments" else None
                amount = self.column(INT, source or n.SelectTable("patients")) or amount
            return n.Apply(choice, (sub(DATE), amount))
        if kind == STR:
            return n.Apply("coalesce", (sub(STR), sub(STR)))
        return None

    def is_in(self, depth: int, rows: n.Frame | None) -> n.Series | None:
        kind = self.pick([STR, SNOMED, DMD])
        if kind == STR:
            series = self.series(STR, depth, rows)
            pool = [t for t in TEXT if t]  # a codelist has no empty code
        else:
            table = "clinical_events" if kind == SNOMED else "medications"
            if rows is not None and n.table_of(rows) == table:
                series = n.Column(rows, "code")
            else:
                series = n.Column(self.picked(table, depth), "code")
            pool = SNOMEDS if kind == SNOMED else DMDS
        codes = self.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        return n.IsIn(series, tuple(sorted(codes)), "generated")

    def case(self, kind: str, depth: int, rows: n.Frame | None) -> n.Series:
        def value() -> n.Series:
            if self.chance(0.15):  # a null, typed as anything (as `then(None)` may be)
                return n.Value(None, self.pick(KINDS))
            return self.series(kind, depth, rows)

        values = [value() for _ in range(self.pick([1, 1, 2]))]
        if all(isinstance(v, n.Value) and v.value is None for v in values):
            values[0] = self.literal(kind, null=False)
        cases = tuple((self.series(BOOL, depth, rows), v) for v in values)
        return n.Case(cases, value() if self.chance(0.6) else None)


@st.composite
def definitions(draw: Draw) -> n.Definition:
    """A dataset of a few variables with an aggregate table, and perhaps a measure."""
    graphs = Graphs(draw, interval=False)
    population = graphs.series(BOOL, 2)
    if draw(st.booleans()):  # most people in, most of the time
        population = n.Apply("or", (population, n.Aggregate("exists", n.SelectTable("patients"))))
    variables = [
        (f"v{i}", graphs.series(draw(st.sampled_from(KINDS)), draw(st.integers(1, 3))))
        for i in range(draw(st.integers(1, 4)))
    ]
    groupable = [name for name, series in variables if series.type in n.CATEGORICAL]
    if not groupable:
        variables.append(("g", n.Column(n.SelectTable("patients"), "sex")))
        groupable = ["g"]
    by = tuple(draw(st.lists(st.sampled_from(groupable), min_size=1, max_size=2, unique=True)))
    numeric = [name for name, series in variables if series.type in (INT, FLOAT)]
    statistics = tuple(
        (name, statistic)
        for name in numeric
        for statistic in draw(st.lists(st.sampled_from(n.STATISTICS), max_size=3, unique=True))
    )
    measures = tuple(draw(measures_of(f"m{i}")) for i in range(draw(st.sampled_from([0, 1, 1, 2]))))
    return n.Definition(
        population=population,
        variables=tuple(variables),
        measures=measures,
        tables=(n.AggregateTable("t", by, statistics),),
    )


@st.composite
def measures_of(draw: Draw, name: str) -> n.Measure:
    graphs = Graphs(draw, interval=True)
    numerator = graphs.series(BOOL, draw(st.integers(1, 3)))
    registrations = n.SelectTable("practice_registrations")
    start, end = (n.Column(registrations, c) for c in ("start_date", "end_date"))
    begun = n.Apply("le", (start, n.IntervalDate("start")))
    choice = draw(st.sampled_from(["begun", "registered", "registered", "any"]))
    denominator: n.Series
    if choice == "begun":  # a registration that had begun by the start
        denominator = n.Aggregate("exists", n.Where(registrations, begun))
    elif choice == "registered":  # as for_patient_on(INTERVAL.start_date), and perhaps more
        current = n.Apply(
            "and",
            (
                begun,
                n.Apply(
                    "or",
                    (
                        n.Apply("is_null", (end,)),
                        # its last day included (as for_patient_on) or not
                        n.Apply(
                            draw(st.sampled_from(["ge", "gt"])), (end, n.IntervalDate("start"))
                        ),
                    ),
                ),
            ),
        )
        on = n.Where(registrations, current)
        keys = (n.Column(on, "start_date"), n.Column(on, "practice"))
        denominator = n.Aggregate("exists", n.PickOne(n.SortBy(on, keys), "last"))
        if draw(st.booleans()):
            denominator = n.Apply("and", (graphs.series(BOOL, 2), denominator))
    else:
        denominator = graphs.series(BOOL, 2)
    groups = tuple(
        (f"g{i}", graphs.series(draw(st.sampled_from([BOOL, INT, STR])), 2))
        for i in range(draw(st.integers(0, 2)))
    )
    intervals = n.Intervals(
        draw(st.sampled_from(["months", "weeks"])),
        draw(st.sampled_from(STARTS)),
        draw(st.integers(1, 4)),
    )
    return n.Measure(name, numerator, denominator, groups, intervals)


@st.composite
def read_in_one_pass(draw: Draw) -> n.Definition:
    """A definition with per-patient aggregates and picks of tables filtered on the row alone
    (what is read in one pass), besides whatever else."""
    definition: n.Definition = draw(definitions())
    graphs = Graphs(draw, interval=False)
    variables = list(definition.variables)
    for i in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(EVENT_TABLES))
        kind = draw(st.sampled_from([k for k in ORDERED if COLUMNS[table].get(k)]))
        column = graphs.column(kind, n.SelectTable(table))
        assert column is not None
        op = draw(st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne"]))
        condition: n.Series = n.Apply(op, (column, graphs.literal(kind)))
        if draw(st.booleans()):
            condition = n.Apply("or", (condition, n.Apply("is_null", (column,))))
        frame = n.Where(n.SelectTable(table), condition)
        value = n.Column(frame, column.name) if isinstance(column, n.Column) else column
        made: n.Series = draw(
            st.sampled_from(
                [
                    n.Aggregate("exists", frame),
                    n.Aggregate("count", frame),
                    n.Aggregate("minimum", value),
                    n.Aggregate("maximum", value),
                    n.Aggregate("count_distinct", value),
                    n.Column(
                        n.PickOne(
                            n.SortBy(frame, (value,)), draw(st.sampled_from(["first", "last"]))
                        ),
                        column.name,
                    ),
                    n.Aggregate("exists", n.PickOne(n.SortBy(frame, (value,)), "last")),
                ]
            )
        )
        variables.append((f"w{i}", made))
    return n.Definition(
        definition.population, tuple(variables), definition.measures, definition.tables
    )


# ---- the property ----------------------------------------------------------------------------


def engines_agree(definition: n.Definition, views: dict[str, pa.Table]) -> None:
    received = through_json(definition)
    duckdb: Engine = engine("duckdb")
    spark: Engine = engine("spark")
    expected = duckdb.run(received, views)
    found = spark.run(received, views)
    problems = results_differences(expected, found)
    assert not problems, "DuckDB and Spark differ:\n" + "\n".join(problems[:10])


@pytest.fixture(scope="module", autouse=True)
def _spark_or_skip() -> None:
    engine("spark")  # skips the module (or fails, when Spark is required) without it


# More to look harder: GPDPR_TRE_EXAMPLES=500 pytest tests/test_tre_properties.py
EXAMPLES = int(os.environ.get("GPDPR_TRE_EXAMPLES", "30"))


@settings(
    # Two thirds of the examples: each starts Spark jobs (the CI's half-hour is shared), and the
    # engines are compared on a real lake's views besides (test_tre_lake_views).
    max_examples=max(1, EXAMPLES * 2 // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(definition=st.one_of(definitions(), read_in_one_pass()), views=projects())
def test_duckdb_and_spark_agree_on_any_definition(
    definition: n.Definition, views: dict[str, pa.Table]
) -> None:
    engines_agree(definition, views)


# ---- measures over spans ---------------------------------------------------------------------


@st.composite
def spannable(draw: Draw) -> n.Measure:
    """A measure, its numerator often rows compared with INTERVAL (what spans carry)."""
    measure: n.Measure = draw(measures_of("m"))
    if draw(st.booleans()):
        graphs = Graphs(draw, interval=False)
        table = draw(st.sampled_from(EVENT_TABLES))
        frame = graphs.frame(table, 1)
        day = graphs.column(DATE, frame)
        if day is not None:
            ops = st.sampled_from(["lt", "le", "gt", "ge", "eq"])
            which = st.sampled_from(["start", "end"])
            condition: n.Series = n.Apply(draw(ops), (day, n.IntervalDate(draw(which))))
            if draw(st.booleans()):
                second = n.Apply(draw(ops), (n.IntervalDate(draw(which)), day))
                condition = n.Apply(
                    draw(st.sampled_from(["and", "and", "or"])), (condition, second)
                )
            if draw(st.booleans()):
                plain = graphs.series(BOOL, 1, frame)
                condition = n.Apply(draw(st.sampled_from(["and", "or"])), (plain, condition))
            rows = n.Where(frame, condition)
            numerator = n.Aggregate("exists", rows)
            groups = measure.group_by
            if draw(st.booleans()):  # the rows counted, as a group
                groups = (*groups, ("rows", n.Aggregate("count", rows)))
            measure = n.Measure("m", numerator, measure.denominator, groups, measure.intervals)
    return measure


def run_sql(query: sql.Query, measure: n.Measure, views: dict[str, pa.Table]) -> pa.Table:
    by_key = keyed(views)
    with DuckDBEngine().sandbox(by_key) as box:
        box.register(sql.INTERVALS, intervals_table(measure.intervals))
        return conform(box.query(query), measure_schema(measure))


@settings(
    max_examples=EXAMPLES * 5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(measure=spannable(), views=projects())
def test_measures_over_spans_and_per_interval_agree(
    measure: n.Measure, views: dict[str, pa.Table]
) -> None:
    definition = through_json(n.Definition(None, (), (measure,)))
    measure = definition.measures[0]
    dialect = sql.DIALECTS["duckdb"]
    try:
        over_spans = spans.measure_query(definition, measure, dialect)
    except spans.NotSpannable:
        event("per interval only")
        return
    event("over spans")
    expected = run_sql(sql.measure_by_interval(definition, measure, dialect), measure, views)
    found = run_sql(over_spans, measure, views)
    assert found.to_pylist() == expected.to_pylist()


@settings(
    max_examples=EXAMPLES * 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(definition=read_in_one_pass(), views=projects())
def test_datasets_read_in_one_pass_and_filter_by_filter_agree(
    definition: n.Definition, views: dict[str, pa.Table]
) -> None:
    definition = through_json(definition)
    dialect = sql.DIALECTS["duckdb"]
    one_pass = sql.dataset_sql(definition, dialect)
    event("aggregates in one grouping" if "reduced_" in one_pass else "no table read in one pass")
    with DuckDBEngine().sandbox(keyed(views)) as box:
        expected, found = (
            conform(
                box.query(sql.dataset_query(definition, dialect, one_pass)),
                dataset_schema(definition),
            )
            for one_pass in (False, True)
        )
    assert not differences(expected, found)
