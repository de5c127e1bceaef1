"""DuckDB, embedded: the default engine, run in a sandbox.

Each run has a connection of its own (`Sandbox`) that can read nothing but the Arrow tables
handed to it and the lake version's own Parquet files (DuckDB's reader, which pushes each
query's columns and filters down to the files, is several times faster than reading them
through Arrow): external access is off but for exactly those files (no other file, no network,
no ATTACH, no COPY, no extensions installed or loaded), Python variables are not read by name
(replacement scans off), and the configuration is locked once set up, so no query can turn any
of this back on. A compiled query, once `engines.guard` has checked its whole text, runs a
step at a time (`Sandbox.query`): each step one SELECT, checked with DuckDB's own parser, whose
answer is either kept as a table of the run's own for the next step or handed back. All of it
within a memory limit (spilling only to a folder of the run's own, removed after) and a time
limit (a watchdog interrupts the step). Dummy runs use the same engine.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from gpdpr.lake.tables import NUMBER, PERSON, columns_tag, written_tag
from gpdpr.lake.tables import PRACTICE as PARTITION
from gpdpr.tre import scratch
from gpdpr.tre.engines import guard, sql
from gpdpr.tre.engines.base import (
    LakeViews,
    Results,
    Views,
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
from gpdpr.tre.engines.base import memory as memory_limit
from gpdpr.tre.query import limits
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import view_name
from gpdpr.tre.views import (
    KEYS,
    PEOPLE,
    READ_PEOPLE,
    RUN_KEY,
    USES,
    key_table,
    mapping_sql,
    numbered_sql,
    people_sql,
    run_key_table,
    source,
)

DIALECT = sql.DIALECTS["duckdb"]
BATCH = 1_000_000  # rows of an answer DuckDB hands over at a time
NAME = re.compile(r"[a-z][a-z0-9_]*")  # a common table expression's name, as compiled
T = TypeVar("T")


class Sandbox:
    """A DuckDB connection that reads only the tables registered with it and the files it is
    given (a lake version's), one SELECT at a time, within the memory limit, and stopped
    `seconds` after it was made."""

    def __init__(
        self,
        seconds: float,
        memory_limit: str,
        threads: int | None = None,
        files: Iterable[str] = (),
    ) -> None:
        """`files`: the only files it may read (absolute paths)."""
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.folder = scratch.folder("duckdb")  # named for this process: see tre.scratch
        allowed = sorted(set(files))
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "python_enable_replacements": False,
            "memory_limit": memory_limit,
            "temp_directory": self.folder,  # set here: it cannot be changed later
            # Rows come out in the order the SQL asks for, or in none: keeping the order they
            # were read in only costs.
            "preserve_insertion_order": False,
        }
        if threads:
            config["threads"] = int(threads)
        try:
            self.con = duckdb.connect(config=config)
            # In this order: DuckDB takes the allowed files only while external access is on
            # and once the database is started.
            if allowed:  # as a parameter: never SQL text, and no 20,000 literals to parse
                self.con.execute("set allowed_paths = ?", [allowed])
            self.con.execute("set enable_external_access = false")
            self.con.execute("set TimeZone = 'UTC'")
            self.con.execute("set enable_progress_bar = false")
            # Each file's footer read once a run, not again by every step that reads the file.
            self.con.execute("set parquet_metadata_cache = true")
            self.con.execute("set lock_configuration = true")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.relations: set[str] = set()

    def register(self, name: str, table: pa.Table) -> None:
        """Make `table` readable as `name` (no copy is made)."""
        self.con.register(name, table)
        self.relations.add(name)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)
        self.relations.discard(name)

    def query(self, query: sql.Query) -> pa.Table:
        """A compiled query's answer: checked by the guard, then run.

        Run a step at a time: each common table expression the answer needs is made into a
        table of the run's own, in order, then the select over those. As one statement,
        DuckDB runs every operator of the query at once (each join's hash table held while the
        aggregates and windows beneath are still being made), and at national scale that
        cannot spill: at 10 million people the dataset and the measure ran out of a 2.5 GB
        limit. Made one at a time, each step spills on its own; at 1 million people the
        answer came as fast, or within a tenth of a second per step (Spark does the same with
        the expressions it uses twice)."""
        guard.check(query.text(), DIALECT.name, self.relations)
        needed = _needed(query)
        steps = [name for name in query.ctes if name in needed]
        last = _last_readers(query, steps)
        made: list[str] = []

        def make(name: str, select: str) -> None:
            if not NAME.fullmatch(name):  # the compiler's names, never a user's
                raise guard.Refused(f"{name!r} is not a name the compiler gives")
            self.con.execute(f"create temp table {name} as {self._one_select(select)}")
            made.append(name)

        def drop(name: str) -> None:
            self.con.execute(f"drop table if exists {name}")
            made.remove(name)

        try:
            for name in steps:  # each reads only those before it
                self._timed(partial(make, name, query.ctes[name]))
                # A table no step still to come reads is dropped now, not at the end: held
                # to the end, at 10 million people the tables read from the lake filled
                # DuckDB's memory and the answer spilled to disk.
                for done in [m for m in made if last[m] == name]:
                    drop(done)
            return self.execute(query.select)
        finally:
            for name in list(made):
                drop(name)

    def execute(self, text: str) -> pa.Table:
        """Run one SELECT statement, interrupted at the time limit."""
        # Streamed out a batch at a time: DuckDB need not hold the whole answer (a national
        # dataset is millions of rows) within its memory limit, where it cannot spill it.
        return self._timed(
            lambda: self.con.sql(self._one_select(text)).to_arrow_reader(BATCH).read_all()
        )

    def _one_select(self, text: str) -> str:
        statements = self.con.extract_statements(text)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise guard.Refused("DuckDB reads it as something other than one SELECT statement")
        return text

    def _timed(self, work: Callable[[], T]) -> T:
        """`work`, interrupted at the time limit."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise too_long(self.seconds)
        watchdog = threading.Timer(left, self.con.interrupt)
        watchdog.start()
        try:
            return work()
        except duckdb.InterruptException:
            raise too_long(self.seconds) from None
        finally:
            watchdog.cancel()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class DuckDBEngine:
    name = "duckdb"

    def __init__(
        self, threads: int | None = None, seconds: float | None = None, memory: str | None = None
    ) -> None:
        """`seconds` and `memory` limit each run (by default GPDPR_TRE_RUN_SECONDS and
        GPDPR_TRE_MEMORY, see engines.base)."""
        self.threads = threads
        self.seconds = run_seconds(seconds)
        self.memory = memory_limit(memory)

    @contextmanager
    def sandbox(
        self, views: Mapping[str, pa.Table], files: Iterable[str] = ()
    ) -> Iterator[Sandbox]:
        """A sandbox with each view registered under its view name, that may read `files`."""
        box = Sandbox(self.seconds, self.memory, self.threads, files)
        try:
            for name, table in views.items():
                box.register(view_name(name), table)
            yield box
        finally:
            box.close()

    def run(self, definition: n.Definition, views: Views) -> Results:
        limits.check(definition)
        files = lake_files(views) if isinstance(views, LakeViews) else ()
        with self.sandbox({}, files) as box:
            try:
                uses = None
                if isinstance(views, LakeViews):
                    install(views, box.con)
                    box.relations.update(view_name(name) for name in views.views)
                    tokens = box.execute(USES).column(0)
                    uses = run_uses(views.salt, tokens)
                    box.con.execute(f"drop table {READ_PEOPLE}")  # its tokens are all it held
                else:
                    for name, table in keyed(views).items():
                        box.register(view_name(name), table)
                dataset = None
                if definition.population is not None:
                    dataset = dataset_answer(box.query, definition, DIALECT)
                measures: dict[str, pa.Table] = {}
                for measure in definition.measures:
                    box.register(sql.INTERVALS, intervals_table(measure.intervals))
                    found = box.query(sql.measure_query(definition, measure, DIALECT))
                    measures[measure.name] = conform(found, measure_schema(measure))
                    box.unregister(sql.INTERVALS)
            except duckdb.Error as error:
                raise failed(self.name, error) from error
        return Results(dataset, measures, uses)


def _needed(query: sql.Query) -> set[str]:
    """The common table expressions the query's select reads, directly or through others (by
    name: a name that only appears in a text literal is made for nothing, never missed)."""
    needed: set[str] = set()
    texts = [query.select]
    while texts:
        text = texts.pop()
        for name, select in query.ctes.items():
            if name not in needed and _names(text, name):
                needed.add(name)
                texts.append(select)
    return needed


def _last_readers(query: sql.Query, steps: list[str]) -> dict[str, str | None]:
    """Each step's last reader: the last of `steps` (in order) whose select names it, or None
    if the query's own select does (or nothing does)."""
    last: dict[str, str | None] = dict.fromkeys(steps)
    for place, reader in enumerate(steps):
        for name in steps[:place]:
            if _names(query.ctes[reader], name):
                last[name] = reader
    for name in steps:
        if _names(query.select, name):
            last[name] = None
    return last


def _names(text: str, name: str) -> bool:
    """Whether `text` names `name` (as a word: a name inside a text literal counts, so a
    table is never dropped while a step might read it)."""
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def install(lake: LakeViews, con: duckdb.DuckDBPyConnection, pseudonyms: bool = False) -> None:
    """Make `lake`'s views on `con`, reading the lake's files in place (DuckDB pushes each
    query's columns and filters down to them). Only this, the service's own code, names the
    sources: compiled queries may name the views alone. `pseudonyms`: the people table keeps
    each person's lake pseudonym (ready-made views, tre.views.made)."""
    for name, files in lake.sources.items():
        read = parquet_sql(con, files)
        if read is None:  # no files: an empty table
            con.register(source(name), files.schema.empty_table())
        else:
            con.execute(f"create temp view {source(name)} as {read}")
    con.register(source("excluded"), _numbers_as_read(lake.excluded))
    con.register(KEYS, key_table(lake.project_key))
    con.register(RUN_KEY, run_key_table(lake))
    con.execute(f"create temp table {READ_PEOPLE} as {people_sql(lake, DIALECT, pseudonyms)}")
    con.execute(f"create temp table {PEOPLE} as {numbered_sql(lake, pseudonyms)}")
    for column, tables in lake.mapped.items():
        mapping = mapping_sql(column, tables, DIALECT)
        con.execute(f"create temp table {source('map_' + column)} as {mapping}")
    for name, text in lake.views.items():
        con.execute(f"create temp view {view_name(name)} as {text}")


def _numbers_as_read(table: pa.Table) -> pa.Table:
    """`table` with people's numbers as DuckDB reads them from the lake's files (a UUID, as
    `parquet_sql` reads them), so that the two compare."""
    if PERSON not in table.column_names:
        return table
    index = table.column_names.index(PERSON)
    storage = table.column(index).cast(pa.binary(16))
    numbers = pa.chunked_array(
        [pa.ExtensionArray.from_storage(NUMBER, chunk) for chunk in storage.chunks], NUMBER
    )
    return table.set_column(index, PERSON, numbers)


def lake_files(lake: LakeViews) -> list[str]:
    """Every file the views read, by absolute path."""
    return sorted(_absolute(f) for files in lake.sources.values() for f in files.files)


def parquet_sql(con: duckdb.DuckDBPyConnection, files: ds.FileSystemDataset) -> str | None:
    """A lake table's files at the run's version as DuckDB reads them, with the table's
    columns whatever version of the specification each file was written under (a column a file
    lacks is null): None if there are no files. The practice, which the lake keeps in the
    folder's name (`practice=A81001`), is read from each file's path: as a hive partition when
    that folder is the only `name=value` in every path (DuckDB takes every such name in a path,
    so one above the lake could stand in for a column), else by pattern, row by row.

    Files are read in groups of those with the same columns, rather than matched by name
    (`union_by_name`), which reads every file's footer again each time a query over them is
    planned: at 10 million patients, 5,000 files a table, that was a sixth of a second for
    every step of a run. A file whose name's tag (lake.tables.columns_tag) is that of every
    column of the table holds them all; only the others' columns are found from their footers,
    once, here (at 10 million, 0.6 s a table when every footer was read)."""
    paths = sorted(_absolute(f) for f in files.files)
    if not paths:
        return None
    wanted = con.from_arrow(files.schema.empty_table())
    # A person's number is bytes in Delta's schema, and a UUID, a 128-bit number, in the files
    # (lake.tables.NUMBER): read as the number.
    kinds = [
        (name, "UUID" if name == PERSON else kind)
        for name, kind in zip(wanted.columns, wanted.dtypes, strict=True)
    ]
    by_folder = all(_partitioned_only(path) for path in paths)
    every = frozenset(name for name, _ in kinds if name != PARTITION)
    whole = columns_tag(every)
    named_whole = {p for p in paths if written_tag(p) == whole}
    groups = _by_columns(con, [p for p in paths if p not in named_whole])
    if named_whole:
        groups.setdefault(every, []).extend(named_whole)
    reads = [_read_sql(sorted(group), found, kinds, by_folder) for found, group in groups.items()]
    return " union all ".join(reads)


def _by_columns(
    con: duckdb.DuckDBPyConnection, paths: list[str]
) -> dict[frozenset[str], list[str]]:
    """`paths` grouped by the columns their files hold (from each file's footer)."""
    if not paths:
        return {}
    listed = ", ".join(DIALECT.string(p) for p in paths)
    found = con.sql(
        f"select file_name, list(name) from parquet_schema([{listed}]) "
        "where num_children is null group by file_name"
    ).fetchall()
    columns = {path: frozenset(names) for path, names in found}
    groups: dict[frozenset[str], list[str]] = {}
    for path in paths:  # in order, and every one: a file with no columns is still read
        groups.setdefault(columns.get(path, frozenset()), []).append(path)
    return groups


def _read_sql(
    paths: list[str], found: frozenset[str], wanted: Iterable[tuple[str, object]], by_folder: bool
) -> str:
    """Files that hold the same columns (`found`), read as the table's (`wanted`: names and
    DuckDB types)."""
    listed = ", ".join(DIALECT.string(p) for p in paths)
    by_folder = by_folder and PARTITION not in found
    # Read as text whatever it looks like: a practice code of digits stays a code.
    hive = "true, hive_types_autocast = false" if by_folder else "false"
    columns = []
    for name, kind in wanted:
        quoted = DIALECT.identifier(name)
        if name == PARTITION and name not in found:
            if by_folder:
                columns.append(f"cast({quoted} as {kind}) as {quoted}")
            else:
                pattern = DIALECT.string(f"/{PARTITION}=([^/]+)/[^/]+$")
                columns.append(f"regexp_extract(filename, {pattern}, 1) as {quoted}")
        elif name in found:  # a cast to the type it has already is no cast
            columns.append(f"cast({quoted} as {kind}) as {quoted}")
        else:
            columns.append(f"cast(null as {kind}) as {quoted}")
    read = f"read_parquet([{listed}], hive_partitioning = {hive})"
    return f"select {', '.join(columns)} from {read}"


def _absolute(path: str) -> str:
    """A file's path as the sandbox allows it and reads it: the same text both times. Made
    absolute as text, not resolved: resolving follows links at every folder of every path, a
    tenth of a run at 10 million patients, and allows nothing more (a link inside the lake is
    the custodian's either way)."""
    return os.path.abspath(path)


def _partitioned_only(path: str) -> bool:
    """Whether the only `name=value` folder in `path` is the practice's, holding the file."""
    *folders, _ = Path(path).parts
    named = [folder for folder in folders if "=" in folder]
    return named == [folders[-1]] and folders[-1].startswith(f"{PARTITION}=")
