"""Engines: where compiled definitions run. All of them take the same project views (Arrow
tables, one per table the definition reads) and give the same `Results`, typed the same way, so
that what a definition means does not depend on where it ran.

DuckDB, embedded, is the default. Spark (`gpdpr.tre.spark`) is for more than one machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import duckdb
import pyarrow as pa

from gpdpr.tre import nodes as n
from gpdpr.tre import sql
from gpdpr.tre.schema import BOOL, DATE, FLOAT, INT, PATIENT_ID, view_name

ARROW_TYPES = {BOOL: pa.bool_(), INT: pa.int64(), FLOAT: pa.float64(), DATE: pa.date32()}


def arrow_type(kind: str) -> pa.DataType:
    return ARROW_TYPES.get(kind, pa.string())


@dataclass(frozen=True)
class Results:
    """What a run computed, before disclosure control: none of it leaves as it is."""

    dataset: pa.Table | None  # one row per patient: stays inside the environment
    measures: dict[str, pa.Table]  # measure name -> interval, groups, numerator, denominator
    tables: dict[str, pa.Table]  # table name -> groups, patients, statistics


class Engine(Protocol):
    name: str

    def run(self, definition: n.Definition, views: Mapping[str, pa.Table]) -> Results: ...


def intervals_table(intervals: n.Intervals) -> pa.Table:
    rows = sql.interval_rows(intervals)
    return pa.table(
        {
            "interval_start": pa.array([r[0] for r in rows], pa.date32()),
            "interval_end": pa.array([r[1] for r in rows], pa.date32()),
        }
    )


def dataset_schema(definition: n.Definition) -> pa.Schema:
    return pa.schema(
        [(PATIENT_ID, pa.string())]
        + [(name, arrow_type(s.type)) for name, s in definition.variables]
    )


def measure_schema(measure: n.Measure) -> pa.Schema:
    return pa.schema(
        [("interval_start", pa.date32()), ("interval_end", pa.date32())]
        + [(name, arrow_type(s.type)) for name, s in measure.group_by]
        + [("numerator", pa.int64()), ("denominator", pa.int64())]
    )


def table_schema(table: n.AggregateTable, variables: dict[str, n.Series]) -> pa.Schema:
    return pa.schema(
        [(name, arrow_type(variables[name].type)) for name in table.by]
        + [("patients", pa.int64())]
        + [(f"{v}_{s}", pa.float64()) for v, s in table.statistics]
    )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """An engine's answer in the service's types (engines differ in integer widths, decimal
    sums and string types)."""
    return pa.table([table.column(f.name).cast(f.type) for f in schema], schema=schema)


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def _connect(self, views: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute("set enable_progress_bar = false")
        con.execute("set TimeZone = 'UTC'")
        if self.threads:
            con.execute(f"set threads = {int(self.threads)}")
        for name, table in views.items():
            con.register(view_name(name), table)
        return con

    def run(self, definition: n.Definition, views: Mapping[str, pa.Table]) -> Results:
        con = self._connect(views)
        try:
            dataset = None
            tables: dict[str, pa.Table] = {}
            if definition.population is not None:
                dataset = conform(
                    con.sql(sql.dataset_sql(definition, sql.DIALECTS["duckdb"])).to_arrow_table(),
                    dataset_schema(definition),
                )
                con.register(sql.DATASET, dataset)
                variables = dict(definition.variables)
                for table in definition.tables:
                    found = con.sql(sql.table_sql(table, sql.DIALECTS["duckdb"])).to_arrow_table()
                    tables[table.name] = conform(found, table_schema(table, variables))
            measures: dict[str, pa.Table] = {}
            for measure in definition.measures:
                con.register(sql.INTERVALS, intervals_table(measure.intervals))
                found = con.sql(
                    sql.measure_sql(definition, measure, sql.DIALECTS["duckdb"])
                ).to_arrow_table()
                measures[measure.name] = conform(found, measure_schema(measure))
                con.unregister(sql.INTERVALS)
            return Results(dataset, measures, tables)
        finally:
            con.close()
