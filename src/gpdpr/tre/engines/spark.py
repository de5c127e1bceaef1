"""Spark: the engine for more than one machine, here run in local mode.

The same compiled SQL as DuckDB (in Spark's dialect), on the same project views, giving the same
`Results` in the same Arrow types. The views are written to Parquet in a folder of the run's own
and read from there, so that Spark reads them lazily from disk instead of holding every view in
the driver's memory; the answers come back through `DataFrame.toArrow()`.

One Spark session is made per process on first use and kept: starting the JVM takes seconds,
running a query on a warm session well under one. Each run works in a session of its own on top
of it (`newSession`), so two runs never see each other's views. The session is local, binds to
the loopback address only, has no web UI, and never fetches packages.

Spark is optional: it needs pyspark (`pip install 'gpdpr[spark]'`) and a Java runtime, 17 or
later. Nothing else in gpdpr imports this module unless Spark is asked for, and this module
imports pyspark only when a session starts, so gpdpr works without them.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.tre.engines import sql
from gpdpr.tre.engines.base import (
    Results,
    arrow_type,
    conform,
    dataset_schema,
    intervals_table,
    keyed,
    measure_schema,
    shown,
    table_schema,
)
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import TABLES, view_name

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

SUBSTITUTE = "spark.sql.variable.substitute"
DEFAULT_MASTER = "local[2]"
DEFAULT_MEMORY = "1g"

INSTALL = (
    "install it with `pip install 'gpdpr[spark]'` (pyspark 4.1) and a Java runtime, version 17 "
    "or later (on Debian or Ubuntu: `apt-get install default-jre-headless`)"
)

# Spark's own logging, off but for fatal errors: a query that fails raises its error in Python,
# so Spark need not also print it with a Java stack. GPDPR_SPARK_LOG_LEVEL=warn (say) to see more.
LOG_LEVEL = "GPDPR_SPARK_LOG_LEVEL"
LOG4J = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
logger.repl.name = org.apache.spark.api.python.PythonGatewayServer
logger.repl.level = {level}
"""

PYTHON_LEVELS = {
    "all": logging.DEBUG,
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "off": logging.CRITICAL + 1,
}

_lock = threading.Lock()
_session: SparkSession | None = None
_folder: Path | None = None


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise UserError(f"the Spark engine needs Java, which is not installed: {INSTALL}")
    return found


def session(
    master: str | None = None, memory: str | None = None, java_options: Sequence[str] = ()
) -> SparkSession:
    """The process's Spark session, started on first use (later arguments are ignored):
    `master` local[N], the driver's `memory`, and any more options for its JVM."""
    global _session, _folder
    with _lock:
        if _session is not None:
            return _session
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise UserError(
                f"the Spark engine needs pyspark, which is not installed: {INSTALL}"
            ) from None
        _java()
        folder = Path(tempfile.mkdtemp(prefix="gpdpr-spark-"))
        level = os.environ.get(LOG_LEVEL, "fatal").lower()
        if level not in PYTHON_LEVELS:
            raise UserError(f"{LOG_LEVEL} is one of {', '.join(PYTHON_LEVELS)}, not {level!r}")
        (folder / "log4j2.properties").write_text(LOG4J.replace("{level}", level))
        for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
            # pyspark's own loggers, which print a failing query's error before raising it
            logging.getLogger(name).setLevel(PYTHON_LEVELS.get(level, logging.CRITICAL))
        java_options = " ".join(
            [
                f"-Dlog4j2.configurationFile=file:{folder / 'log4j2.properties'}",
                "-Duser.timezone=UTC",
                "-Djava.net.preferIPv4Stack=true",
                *java_options,
            ]
        )
        # Bind to the loopback address, so that the local session needs no network at all.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
        settings = {
            "spark.driver.memory": memory or DEFAULT_MEMORY,
            "spark.driver.extraJavaOptions": java_options,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.ansi.enabled": "true",
            # Spark would otherwise replace ${...} in the SQL, even inside quotes, with settings,
            # Java properties or environment variables (${env:NAME}): a definition's text
            # '${env:SECRET}' would read the server's secret into the results.
            SUBSTITUTE: "false",
            "spark.sql.catalogImplementation": "in-memory",
            "spark.sql.warehouse.dir": str(folder / "warehouse"),
            "spark.local.dir": str(folder / "local"),
            "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
            "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
        }
        builder = SparkSession.builder.master(master or DEFAULT_MASTER).appName("gpdpr")
        for key, value in settings.items():
            builder = builder.config(key, value)
        try:
            made = builder.getOrCreate()
        except Exception as error:
            shutil.rmtree(folder, ignore_errors=True)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise UserError(f"Spark did not start ({first}); {INSTALL}") from error
        made.sparkContext.setLogLevel(level.upper())
        _session, _folder = made, folder
        atexit.register(stop)
        return made


def stop() -> None:
    """Stop the process's Spark session, if one was started."""
    global _session, _folder
    with _lock:
        if _session is not None:
            _session.stop()
        if _folder is not None:
            shutil.rmtree(_folder, ignore_errors=True)
        _session, _folder = None, None


def _spark_schema(schema: pa.Schema) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    plain = pa.schema(
        [
            field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field
            for field in schema
        ]
    )
    return from_arrow_schema(plain)


def _typed(name: str, table: pa.Table) -> pa.Table:
    """A view whose columns of nothing but nulls have no type (pa.null()) given their column's
    type, as Spark cannot read an untyped column from Parquet (DuckDB takes it as it is)."""
    for index, field in enumerate(table.schema):
        column = TABLES[name].columns.get(field.name)
        if pa.types.is_null(field.type) and column is not None:
            kind = arrow_type(column.type)
            table = table.set_column(index, field.with_type(kind), table.column(index).cast(kind))
    return table


class SparkEngine:
    name = "spark"

    def __init__(
        self,
        master: str | None = None,
        memory: str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`master` and `memory` apply if this is the first Spark engine of the process (the
        session is shared); `settings` are Spark SQL settings for this engine's runs only."""
        self.master = master
        self.memory = memory
        self.settings = dict(settings or {})

    def run(self, definition: n.Definition, views: Mapping[str, pa.Table]) -> Results:
        spark = session(self.master, self.memory).newSession()
        for key, value in self.settings.items():
            spark.conf.set(key, value)
        spark.conf.set(SUBSTITUTE, "false")  # whatever the settings say
        registered: list[str] = []
        with tempfile.TemporaryDirectory(prefix="gpdpr-spark-run-") as folder:

            def register(name: str, table: pa.Table) -> None:
                path = Path(folder) / f"{len(registered)}.parquet"
                pq.write_table(table, path)
                # Giving the schema spares Spark a job to read it back from the file.
                schema = _spark_schema(table.schema)
                spark.read.schema(schema).parquet(str(path)).createOrReplaceTempView(name)
                registered.append(name)

            try:
                # The views the definition reads (the others would only cost time to load).
                wanted = {"patients", *n.columns_used(definition)}
                by_key, by_pseudonym = keyed({k: v for k, v in views.items() if k in wanted})
                for name, table in by_key.items():
                    register(view_name(name), _typed(name, table))
                return self._run(spark, definition, register, by_pseudonym)
            finally:
                for name in registered:
                    spark.catalog.dropTempView(name)

    @staticmethod
    def _run(
        spark: SparkSession,
        definition: n.Definition,
        register: Callable[[str, pa.Table], None],
        by_pseudonym: pa.ChunkedArray,
    ) -> Results:
        dialect = sql.DIALECTS["spark"]
        dataset = None
        tables: dict[str, pa.Table] = {}
        if definition.population is not None:
            found = spark.sql(sql.dataset_sql(definition, dialect)).toArrow()
            dataset = conform(shown(found, by_pseudonym), dataset_schema(definition))
            if definition.tables:
                register(sql.DATASET, dataset)
            variables = dict(definition.variables)
            for table in definition.tables:
                found = spark.sql(sql.table_sql(table, dialect)).toArrow()
                tables[table.name] = conform(found, table_schema(table, variables))
        measures: dict[str, pa.Table] = {}
        for measure in definition.measures:
            register(sql.INTERVALS, intervals_table(measure.intervals))
            found = _collect(spark, sql.measure_query(definition, measure, dialect))
            measures[measure.name] = conform(found, measure_schema(measure))
        return Results(dataset, measures, tables)


def _collect(spark: SparkSession, query: sql.Query) -> pa.Table:
    """A query's answer, each of its common table expressions that is used more than once
    computed once and kept (Spark would otherwise work each out again wherever it is used, and
    a measure over spans uses some several times over)."""
    kept = []
    try:
        texts = [*query.ctes.values(), query.select]
        for index, (name, text) in enumerate(query.ctes.items()):
            frame = spark.sql(text)
            uses = sum(len(re.findall(rf"\b{name}\b", t)) for t in texts[index + 1 :])
            if uses > 1:
                frame = frame.cache()
                kept.append(frame)
            frame.createOrReplaceTempView(name)
        return spark.sql(query.select).toArrow()
    finally:
        for name in query.ctes:
            spark.catalog.dropTempView(name)
        for frame in kept:
            frame.unpersist()
