"""DuckDB, embedded: the default engine."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from gpdpr.tre.engines import sql
from gpdpr.tre.engines.base import (
    Results,
    conform,
    dataset_schema,
    intervals_table,
    keyed,
    measure_schema,
    shown,
    table_schema,
)
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import view_name


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def _connect(self, views: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute("set enable_progress_bar = false")
        con.execute("set TimeZone = 'UTC'")
        # Rows come out in the order the SQL asks for, or in none: keeping the order they were
        # read in only costs.
        con.execute("set preserve_insertion_order = false")
        if self.threads:
            con.execute(f"set threads = {int(self.threads)}")
        for name, table in views.items():
            con.register(view_name(name), table)
        return con

    def run(self, definition: n.Definition, views: Mapping[str, pa.Table]) -> Results:
        by_key, by_pseudonym = keyed(views)
        con = self._connect(by_key)
        try:
            dataset = None
            tables: dict[str, pa.Table] = {}
            if definition.population is not None:
                found = con.sql(sql.dataset_sql(definition, sql.DIALECTS["duckdb"]))
                dataset = conform(
                    shown(found.to_arrow_table(), by_pseudonym), dataset_schema(definition)
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
