"""Helpers for the research environment's engine tests: small project views written as Python
rows, the engines to run them on, and running a definition through its JSON form.

    views = make_views(
        patients=[{"patient_id": "p1", "sex": "F", "date_of_birth": date(1980, 1, 1)}],
        clinical_events=[{"patient_id": "p1", "code": "123", "effective_date": date(2020, 1, 1)}],
    )

Every view has `patient_id` and each of its table's columns (schema.TABLES), typed as the
engines type them (engines.arrow_type); a column a row leaves out is null. Every table is there
(empty unless given), as a project's views would be.

Engines are made once per test process: DuckDB always, Spark when pyspark and Java are there
(one local session per process, with little memory, since pytest-xdist runs two). Without them
the Spark tests are skipped, saying why, unless GPDPR_REQUIRE_SPARK=1 (as in CI), when they fail.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

import pyarrow as pa
import pytest

from gpdpr.errors import UserError
from gpdpr.tre.engines.base import Engine, Results, arrow_type, keyed
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import Dataset, Measures, definition_of
from gpdpr.tre.query.schema import PATIENT_ID, TABLES

ENGINES = ("duckdb", "spark")
REQUIRE_SPARK = "GPDPR_REQUIRE_SPARK"
# Spark in the tests: two cores, and a modest heap (each pytest-xdist worker has its own JVM,
# kept for the whole session: at 512m, a worker's heap ran out late in a full run, once views
# read from a lake were tested too).
SPARK_MASTER = os.environ.get("GPDPR_TEST_SPARK_MASTER", "local[2]")
SPARK_MEMORY = os.environ.get("GPDPR_TEST_SPARK_MEMORY", "1g")
# Test data is a few rows: one partition after a shuffle, and no re-planning on the way
# (adaptive execution) or compiling of whole stages, which cost more than they save here; and
# the JVM's quick compiler only, since a test process is short (a quarter less time, measured).
SPARK_JAVA_OPTIONS = ["-XX:TieredStopAtLevel=1"]
SPARK_SETTINGS = {
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
}


# ---- views -----------------------------------------------------------------------------------


def view_schema(table: str) -> pa.Schema:
    columns = TABLES[table].columns
    return pa.schema(
        [(PATIENT_ID, pa.string())] + [(c.name, arrow_type(c.type)) for c in columns.values()]
    )


def make_view(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    schema = view_schema(table)
    listed = list(rows)
    for row in listed:
        unknown = set(row) - set(schema.names)
        assert not unknown, f"{table} has no column {', '.join(sorted(unknown))}"
    return pa.table(
        {f.name: pa.array([row.get(f.name) for row in listed], f.type) for f in schema},
        schema=schema,
    )


def make_views(**tables: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """{table: view} for every table: the rows given, or none."""
    unknown = set(tables) - set(TABLES)
    assert not unknown, f"no such tables: {', '.join(sorted(unknown))}"
    return {name: make_view(name, tables.get(name, ())) for name in TABLES}


# ---- engines ---------------------------------------------------------------------------------

_engines: dict[str, Engine] = {}
_spark_missing: str | None = None


def engine(name: str) -> Engine:
    """This process's engine `name`; skips (or, when required, fails) if Spark cannot run."""
    global _spark_missing
    if name in _engines:
        return _engines[name]
    if name == "duckdb":
        _engines[name] = DuckDBEngine(threads=1)
        return _engines[name]
    assert name == "spark", name
    if _spark_missing is None:
        try:
            from gpdpr.tre.engines import spark

            spark.session(SPARK_MASTER, SPARK_MEMORY, SPARK_JAVA_OPTIONS)
            _engines[name] = spark.SparkEngine(settings=SPARK_SETTINGS)
            return _engines[name]
        except UserError as error:
            _spark_missing = str(error)
    if os.environ.get(REQUIRE_SPARK) == "1":
        pytest.fail(f"{REQUIRE_SPARK}=1 but Spark cannot run: {_spark_missing}")
    pytest.skip(f"Spark cannot run here: {_spark_missing}")


# ---- definitions -----------------------------------------------------------------------------


def through_json(definition: n.Definition) -> n.Definition:
    """The definition as the service receives it: written to JSON and read back."""
    return serial.from_json(serial.to_json(definition))


def run(
    engine: Engine,
    views: Mapping[str, pa.Table],
    dataset: Dataset | None = None,
    measures: Measures | None = None,
) -> Results:
    """Run a definition (through its JSON form). A dataset that releases nothing is given a
    table (by its first variable that may be a group), as a definition must release
    something, so that the dataset itself can be checked."""
    if dataset is not None and not dataset.tables and dataset.population is not None:
        dataset.add_table("everyone", by=[_any_groupable(dataset)])
    return by_id(engine.run(through_json(definition_of(dataset, measures)), views), views)


def by_id(results: Results, views: Mapping[str, pa.Table]) -> Results:
    """The results with each dataset row under the test's own name for its patient (the
    patients view's `patient_id`), where the engine keeps it by the run's whole-number key."""
    if results.dataset is None:
        return results
    keys = keyed(views)["patients"].column(PATIENT_ID).to_pylist()
    name_of = dict(zip(keys, views["patients"].column(PATIENT_ID).to_pylist(), strict=True))
    dataset = results.dataset
    names = pa.array([name_of[k] for k in dataset.column(PATIENT_ID).to_pylist()], pa.string())
    return replace(results, dataset=dataset.set_column(0, PATIENT_ID, names))


def _any_groupable(dataset: Dataset) -> str:
    for name, series in dataset.variables.items():
        if series.type in n.CATEGORICAL:
            return str(name)
    raise AssertionError("give the dataset a variable that may be a group (not a date or decimal)")


def rows(results: Results) -> list[dict[str, Any]]:
    """The dataset's rows, in patient order."""
    assert results.dataset is not None
    return sorted(results.dataset.to_pylist(), key=lambda r: r[PATIENT_ID])


def column(results: Results, name: str) -> dict[str, Any]:
    """{patient_id: value} of one dataset variable."""
    return {r[PATIENT_ID]: r[name] for r in rows(results)}


# ---- comparing engines -----------------------------------------------------------------------

REL_TOL = 1e-9


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    return bool(type(a) is type(b) and a == b)


def differences(a: pa.Table, b: pa.Table, keys: Sequence[str] | None = None) -> list[str]:
    """How two answers differ: their schemas, or their rows (sorted by `keys`, or by every
    column), values compared exactly except decimals (a small relative tolerance)."""
    if a.schema != b.schema:
        return [f"schemas differ:\n{a.schema}\n---\n{b.schema}"]
    order = list(keys) if keys is not None else a.column_names

    def ordered(table: pa.Table) -> list[dict[str, Any]]:
        return sorted(table.to_pylist(), key=lambda r: tuple(_sortable(r[k]) for k in order))

    left, right = ordered(a), ordered(b)
    if len(left) != len(right):
        return [f"{len(left)} rows against {len(right)}"]
    out = []
    for x, y in zip(left, right, strict=True):
        if not all(same_value(x[k], y[k]) for k in x):
            out.append(f"{x}\n  != {y}")
    return out


def _sortable(value: Any) -> tuple[int, str, Any]:
    if value is None:
        return (0, "", 0)
    if isinstance(value, (bool, int, float)):
        return (1, "number", float(value))
    if isinstance(value, date):
        return (1, "date", value.toordinal())
    return (1, type(value).__name__, value)


def results_differences(a: Results, b: Results) -> list[str]:
    out = []
    if (a.dataset is None) != (b.dataset is None):
        out.append("one has a dataset, the other not")
    elif a.dataset is not None and b.dataset is not None:
        out += [f"dataset: {d}" for d in differences(a.dataset, b.dataset, [PATIENT_ID])]
    if set(a.measures) != set(b.measures):
        return [*out, f"measures {sorted(a.measures)} against {sorted(b.measures)}"]
    for name in a.measures:
        # Rows come in an order the SQL fixes: it must be the same on both engines.
        out += [
            f"measure {name}: {d}" for d in differences(a.measures[name], b.measures[name], keys=[])
        ]
    return out
