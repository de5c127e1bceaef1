"""Spark: the engine for more than one machine, here run in local mode.

The same compiled SQL as DuckDB (in Spark's dialect), on the same project views, giving the same
`Results` in the same Arrow types. A run's views are made by Spark from the lake version's own
Parquet files, read where they are (`Sandbox.install`: on a cluster, the executors must see the
lake at the same path, a shared file system; object storage is not supported yet); views handed
over already made are written to Parquet in a folder of the run's own and read from there. The
answers come back through `DataFrame.toArrow()`.

What confines a run (`Sandbox`, and `CONFINED` set on its session whatever else is asked):
  - SQL: only what `engines.guard` passes (one query, the compiler's functions only: never
    `reflect` or `java_method`, which would call into Java; only this run's tables by plain
    name: never `parquet.`/path``, a qualified name or a table function);
  - files: running SQL on files is off (`spark.sql.runSQLOnFiles`), and each query's analysed
    plan is checked to read nothing but this run's Parquet files and the lake files its views
    are made from (which no query may name: the guard allows the views' names only);
  - text: ${...} substitution is off (it would replace text even inside quotes with settings
    or environment variables);
  - time: every job of the run is in one job group, cancelled by a watchdog at the time limit;
    a run still not ended `GRACE_SECONDS` later (Spark stuck outside any job, such as a
    collection whose serving thread died, or a JVM that no longer answers) ends the process's
    Spark session, JVM and all (`_Deadline`): a run ends, whatever Spark does; a JVM out of
    memory exits, and the next run starts a new session;
  - memory: the driver's JVM heap (`memory`, set when the session starts) bounds what a run
    holds; Spark spills to the session's own folder (`spark.local.dir`), removed on exit;
  - visibility: each run has a session of its own (`newSession`), so runs never see each
    other's views, and its views are dropped afterwards.

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
import contextlib
import itertools
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.lake.tables import PRACTICE as PARTITION
from gpdpr.tre import scratch
from gpdpr.tre.engines import guard, sql
from gpdpr.tre.engines.base import (
    LakeViews,
    Results,
    Views,
    arrow_type,
    conform,
    dataset_answer,
    failed,
    intervals_table,
    keyed,
    measure_schema,
    run_seconds,
    run_uses,
    too_long,
)
from gpdpr.tre.query import limits
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import TABLES, view_name
from gpdpr.tre.views import (
    KEYED,
    KEYS,
    PEOPLE,
    READ_PEOPLE,
    RUN_KEY,
    USES,
    key_table,
    mapping_sql,
    people_sql,
    run_key_table,
    source,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DIALECT = sql.DIALECTS["spark"]
SUBSTITUTE = "spark.sql.variable.substitute"
# Set on every run's session, after any settings an engine is given.
CONFINED = {SUBSTITUTE: "false", "spark.sql.runSQLOnFiles": "false"}
DEFAULT_MASTER = "local[2]"
DEFAULT_MEMORY = "1g"
# How long a run may go on after its time limit, its jobs cancelled, before its Spark session is
# ended: cancelling stops jobs, and a run can be stuck outside any (seen in a collection to
# Arrow whose serving thread was gone, the driver short of memory).
GRACE_SECONDS = 60.0

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
# What the process's first session was started with: a session started after one was ended or
# its JVM exited (`_forget`) is started the same way.
_started_with: tuple[str | None, str | None, tuple[str, ...]] | None = None


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
    global _session, _folder, _started_with
    with _lock:
        if _session is not None and _running(_session):
            return _session
        if _session is not None:  # its JVM exited (out of memory, or killed): start anew
            _forget(_session)
        if _started_with is None:
            _started_with = (master, memory, tuple(java_options))
        master, memory, java_options = _started_with
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise UserError(
                f"the Spark engine needs pyspark, which is not installed: {INSTALL}"
            ) from None
        _java()
        folder = Path(scratch.folder("spark"))  # named for this process: see tre.scratch
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
                # Plans as deep as limits.MAX_DEPTH allows are serialised recursively: the
                # default thread stack overflows on a deep enough one.
                "-Xss16m",
                # A driver out of memory leaves threads dead and others waiting on them for
                # ever (a collection to Arrow was seen to): it exits instead, its runs fail at
                # once, and the next run starts a new session (`session`).
                "-XX:+ExitOnOutOfMemoryError",
                *java_options,
            ]
        )
        master = master or DEFAULT_MASTER
        local = master.startswith("local")
        if local:
            # Bind to the loopback address, so that the local session needs no network at all
            # (a cluster's executors must reach the driver: its own settings say where).
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
        loopback = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
        settings = {
            "spark.driver.memory": memory or DEFAULT_MEMORY,
            "spark.driver.extraJavaOptions": java_options,
            **(loopback if local else {}),
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            # What Spark keeps of past queries for its web UI (off) would otherwise grow with
            # every run of a long-lived process: a deep definition's plan is large.
            "spark.sql.ui.retainedExecutions": "10",
            "spark.ui.retainedJobs": "50",
            "spark.ui.retainedStages": "50",
            "spark.ui.retainedTasks": "1000",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.ansi.enabled": "true",
            # Spark would otherwise replace ${...} in the SQL, even inside quotes, with settings,
            # Java properties or environment variables (${env:NAME}): a definition's text
            # '${env:SECRET}' would read the server's secret into the results. And it would
            # read files named in the SQL (select * from parquet.`/path`).
            **CONFINED,
            "spark.sql.catalogImplementation": "in-memory",
            "spark.sql.warehouse.dir": str(folder / "warehouse"),
            "spark.local.dir": str(folder / "local"),
            "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
            "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
        }
        builder = SparkSession.builder.master(master).appName("gpdpr")
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


def _end_stuck(made: SparkSession) -> None:
    """End the process's Spark session `made` when it no longer answers: its JVM killed, not
    asked (asking one that is stuck would wait with it), so that every call waiting on it fails
    at once; then forgotten, so that the next run starts a new one."""
    with _lock:
        if _session is made:  # else ended already
            _forget(made)


def _running(made: SparkSession) -> bool:
    """Whether the session's JVM is still running (one pyspark started, as here)."""
    process = getattr(made.sparkContext._gateway, "proc", None)
    return process is None or process.poll() is None


def _forget(made: SparkSession) -> None:
    """Kill the session's JVM if it still runs, and clear pyspark's record of it and ours
    (`_lock` held)."""
    global _session, _folder
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    gateway = made.sparkContext._gateway
    process = getattr(gateway, "proc", None)
    if process is not None:
        process.kill()
        process.wait()
    if gateway is not None:
        with contextlib.suppress(Exception):  # its JVM is gone: only Python's side is left
            gateway.shutdown()
    SparkContext._active_spark_context = None
    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
    _session, _folder = None, None


class _Deadline:
    """Ends the process's Spark session (`_end_stuck`) if a run has not ended `seconds` after
    it began: the last resort behind the job group's cancelling (`Sandbox`)."""

    def __init__(self, made: SparkSession, seconds: float) -> None:
        self.ended = threading.Event()

        def end() -> None:
            self.ended.set()
            _end_stuck(made)

        self.timer = threading.Timer(seconds, end)
        self.timer.daemon = True
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()


def stop() -> None:
    """Stop the process's Spark session, if one was started."""
    global _session, _folder
    with _lock:
        if _session is not None and not _running(_session):
            _forget(_session)  # nothing to ask a JVM that is gone
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
        seconds: float | None = None,
        grace: float = GRACE_SECONDS,
    ) -> None:
        """`master` and `memory` apply if this is the first Spark engine of the process (the
        session is shared); `settings` are Spark SQL settings for this engine's runs only
        (never those that confine it: `CONFINED`); `seconds` limits each run (by default
        GPDPR_TRE_RUN_SECONDS, see engines.base), and `grace` seconds after it a run not yet
        ended ends the process's Spark session (`_Deadline`)."""
        self.master = master
        self.memory = memory
        self.settings = dict(settings or {})
        self.seconds = run_seconds(seconds)
        self.grace = grace

    def run(self, definition: n.Definition, views: Views) -> Results:
        made = session(self.master, self.memory)  # started (once a process) outside the limit
        limits.check(definition)
        deadline = _Deadline(made, self.seconds + self.grace)
        try:
            results = self._run(made, definition, views, deadline)
        except Exception:
            if deadline.ended.is_set():  # whatever Spark's calls raised as their JVM went
                raise too_long(self.seconds) from None
            raise
        finally:
            deadline.cancel()  # after which `ended` can no longer change
        if deadline.ended.is_set():  # an answer read as its JVM went may be cut short
            raise too_long(self.seconds)
        return results

    def _run(
        self, made: SparkSession, definition: n.Definition, views: Views, deadline: _Deadline
    ) -> Results:
        spark = made.newSession()
        for key, value in {**self.settings, **CONFINED}.items():
            spark.conf.set(key, value)
        with scratch.temporary("spark-run") as folder:
            box = Sandbox(spark, Path(folder), self.seconds)
            try:
                uses = None
                if isinstance(views, LakeViews):
                    box.install(views)
                    tokens = box._collect(box.spark.sql(USES)).column(0)
                    uses = run_uses(views.salt, tokens)
                else:
                    # The views the definition reads (the others would only cost time to load).
                    wanted = {"patients", *n.columns_used(definition)}
                    by_key = keyed({k: v for k, v in views.items() if k in wanted})
                    for name, table in by_key.items():
                        box.register(view_name(name), _typed(name, table))
                dataset = None
                if definition.population is not None:
                    dataset = dataset_answer(box.query, definition, DIALECT)
                measures: dict[str, pa.Table] = {}
                for measure in definition.measures:
                    box.register(sql.INTERVALS, intervals_table(measure.intervals))
                    found = box.query(sql.measure_query(definition, measure, DIALECT))
                    measures[measure.name] = conform(found, measure_schema(measure))
                return Results(dataset, measures, uses)
            finally:
                if deadline.ended.is_set():  # an ended session has nothing left to close
                    box.abandon()
                else:
                    box.close()


class Sandbox:
    """One run's confinement in its Spark session: only the views made here (from Parquet
    files in the run's own folder, or from the lake's files) are read, which the analysed plan
    of every query is checked for; only SQL the guard passes runs; and every job of the run is
    in one job group, which a watchdog cancels at the time limit."""

    def __init__(self, spark: SparkSession, folder: Path, seconds: float) -> None:
        self.spark = spark
        self.folder = folder.resolve()
        self.seconds = seconds
        self.relations: set[str] = set()  # what compiled queries may read
        self.defined: set[str] = set()  # every temporary view made, to drop after
        self.lake_files: set[Path] = set()  # the lake's files its views read
        self.kept: list[DataFrame] = []
        self.files = itertools.count()
        self.group = f"gpdpr-run-{uuid.uuid4().hex}"
        self.expired = threading.Event()
        context = spark.sparkContext

        self.closed = threading.Event()

        def stop() -> None:
            # Cancelled again and again until the run is closed: a job submitted just after a
            # cancel (on a busy machine, the query was between its check of `expired` and its
            # first job) would otherwise run on unstopped.
            self.expired.set()
            while True:
                with contextlib.suppress(Exception):  # the session may have been ended
                    context.cancelJobGroup(self.group)
                if self.closed.wait(0.5):
                    return

        self.watchdog = threading.Timer(seconds, stop)
        self.watchdog.daemon = True  # never what keeps the process alive
        self.watchdog.start()

    def register(self, name: str, table: pa.Table, shown: bool = True) -> None:
        """Make `table` readable as `name`: by compiled queries if `shown`, else only by the
        views `install` defines."""
        path = self.folder / f"{next(self.files)}.parquet"  # a new file, even for a new intervals
        pq.write_table(table, path)
        # Giving the schema spares Spark a job to read it back from the file.
        schema = _spark_schema(table.schema)
        self.spark.read.schema(schema).parquet(str(path)).createOrReplaceTempView(name)
        self.defined.add(name)
        if shown:
            self.relations.add(name)

    def install(self, lake: LakeViews) -> None:
        """Make `lake`'s views, Spark reading the lake version's own Parquet files where they
        are (on a cluster, the executors see the lake at the same path). The views are
        defined here, not by any compiled query, and may be the only names a compiled query
        reads."""
        for name, files in lake.sources.items():
            self._read_lake(source(name), files)
        self.register(source("excluded"), lake.excluded, shown=False)
        # The key's blocks as a file of the run's own (removed with its folder), not as text
        # in SQL, which an error message could repeat.
        self.register(KEYS, key_table(lake.project_key), shown=False)
        self.register(RUN_KEY, run_key_table(lake), shown=False)
        # Numbered as they are read, in one statement: Spark carries a window's columns
        # through its sort without the cost DuckDB has for it (`views.numbered_sql`), and the
        # people read and numbered as two cached tables ran the driver out of memory.
        numbered = f"select p.*, {KEYED} from ({people_sql(lake, DIALECT)}) p"
        people = self.spark.sql(numbered).cache()  # every view joins it; `USES` reads it
        self.kept.append(people)
        for name in (PEOPLE, READ_PEOPLE):
            people.createOrReplaceTempView(name)
            self.defined.add(name)
        for column, tables in lake.mapped.items():
            mapping = self.spark.sql(mapping_sql(column, tables, DIALECT)).cache()
            self.kept.append(mapping)
            mapping.createOrReplaceTempView(source(f"map_{column}"))
            self.defined.add(source(f"map_{column}"))
        for name, text in lake.views.items():
            self.spark.sql(text).createOrReplaceTempView(view_name(name))
            self.defined.add(view_name(name))
            self.relations.add(view_name(name))

    def _read_lake(self, name: str, files: ds.Dataset) -> None:
        """One lake table's files at the run's lake version, its partition column (the practice)
        read from their folders' names."""
        paths = sorted(str(Path(f).resolve()) for f in files.files)
        if not paths:  # an empty table is a file with no rows
            self.register(name, files.schema.empty_table(), shown=False)
            return
        partitioned = Path(paths[0]).parent.name.startswith(f"{PARTITION}=")
        base = Path(paths[0]).parent.parent if partitioned else Path(paths[0]).parent
        reader = self.spark.read.schema(_spark_schema(files.schema)).option("basePath", str(base))
        reader.parquet(*paths).createOrReplaceTempView(name)
        self.defined.add(name)
        self.lake_files.update(Path(p) for p in paths)

    def frame(self, text: str) -> DataFrame:
        """A query as a DataFrame, checked by the guard and by its plan, not yet run."""
        guard.check(text, DIALECT.name, self.relations)
        try:
            frame = self.spark.sql(text)
        except Exception as error:
            raise failed("Spark", error) from error
        _check_plan(frame, self.folder, self.lake_files)
        return frame

    def query(self, query: sql.Query) -> pa.Table:
        """A query's answer, each of its common table expressions that is used more than once
        computed once and kept (Spark would otherwise work each out again wherever it is used,
        and a measure over spans uses some several times over)."""
        if self.expired.is_set():
            raise too_long(self.seconds)
        # Every job of this query in the run's group (a setting of this thread's).
        context = self.spark.sparkContext
        context.setJobGroup(self.group, "a gpdpr run", interruptOnCancel=True)
        try:
            texts = [*query.ctes.values(), query.select]
            for index, (name, text) in enumerate(query.ctes.items()):
                frame = self.frame(text)
                uses = sum(len(re.findall(rf"\b{name}\b", t)) for t in texts[index + 1 :])
                if uses > 1:
                    frame = frame.cache()
                    self.kept.append(frame)
                frame.createOrReplaceTempView(name)
                self.relations.add(name)
            return self._collect(self.frame(query.select))
        finally:
            context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
            for name in query.ctes:
                self.spark.catalog.dropTempView(name)
                self.relations.discard(name)

    def _collect(self, frame: DataFrame) -> pa.Table:
        try:
            return frame.toArrow()
        except Exception as error:
            if self.expired.is_set():
                raise too_long(self.seconds) from None
            raise failed("Spark", error) from error

    def abandon(self) -> None:
        """Stop the watchdog, asking Spark nothing: its session was ended (`_Deadline`)."""
        self.closed.set()
        self.watchdog.cancel()

    def close(self) -> None:
        self.abandon()
        for frame in self.kept:
            frame.unpersist()
        for name in self.defined | self.relations:
            self.spark.catalog.dropTempView(name)


def _check_plan(frame: DataFrame, folder: Path, lake_files: set[Path]) -> None:
    """Refuse a query whose analysed plan reads anything but the run's own Parquet files (the
    views registered for it), the lake files its views were made from, and the table
    expressions it defines."""
    leaves = frame._jdf.queryExecution().analyzed().collectLeaves().iterator()
    while leaves.hasNext():
        leaf = leaves.next()
        kind = leaf.getClass().getSimpleName()
        if kind in ("OneRowRelation", "CTERelationRef"):
            continue
        if kind == "LogicalRelation" and _within(leaf, folder, lake_files):
            continue
        raise guard.Refused(f"Spark would read a {kind} that is not a view of this run")


def _within(relation: Any, folder: Path, lake_files: set[Path]) -> bool:
    """Whether a relation reads only files in `folder` or the lake files named."""
    try:
        paths = relation.relation().location().rootPaths()
    except Exception:  # not files at all
        return False
    found = [Path(paths.apply(i).toUri().getPath()).resolve() for i in range(paths.length())]
    return bool(found) and all(folder in p.parents or p in lake_files for p in found)
