"""Running a definition: on dummy data while developing, or for real under an agreement.

A real run, in order, and nothing read before the step that needs it:
  1. the JSON definition is parsed and checked (types, codes, what it releases);
  2. the agreement is asked (`governance.agreements.authorise`) for exactly the fields the
     definition reads, for this person, now: refused if expired, revoked or out of scope;
  3. the project's views are built from one lake version (period, population, opt-outs,
     project pseudonyms);
  4. the engine computes; an empty population is refused;
  5. disclosure control turns measures and tables into the files that may be asked for; the
     raw counts behind each published number stay inside, for the differencing check;
  6. the run is recorded, with its definition, lake version and files, and logged publicly;
     centrally, a token per person it read, for their own view (gpdpr.transparency.patient).
Outputs wait in HOME/tre/runs/RUN-.../outputs until two checkers release them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import runpy
import shutil
import statistics
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import connect, url_for_home
from gpdpr.db.models import now
from gpdpr.errors import UserError
from gpdpr.governance.agreements import Scope, authorise, expire_due
from gpdpr.lake.store import Lake
from gpdpr.transparency.patient import keep_run_uses
from gpdpr.tre import views
from gpdpr.tre.engines.base import Engine, Results
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import Dataset, Measures, definition_of
from gpdpr.tre.query.schema import PATIENT_ID
from gpdpr.tre.release import disclosure

RUNS = "tre/runs"
OUTPUTS = "outputs"
CELLS = "cells.json"  # raw counts: inside the environment only
DEFINITION = "definition.json"


# ---- definitions -----------------------------------------------------------------------------


def compile_file(path: Path) -> bytes:
    """The JSON of a definition file: a `.json` is read as it is (and checked); a `.py` is run
    here, on the researcher's machine, to build its `dataset` and/or `measures`."""
    if not path.exists():
        raise UserError(f"no definition file {path}")
    if path.suffix == ".json":
        document = path.read_bytes()
        serial.from_json(document)
        return document
    if path.suffix != ".py":
        raise UserError(f"{path}: a definition is a Python file (.py) or its compiled JSON (.json)")
    found = _run_definition(path)
    dataset, measures = found.get("dataset"), found.get("measures")
    if not isinstance(dataset, Dataset | None) or not isinstance(measures, Measures | None):
        raise UserError(
            f"{path}: `dataset` must be a Dataset() and `measures` a Measures(); something else "
            "has those names"
        )
    if dataset is None and measures is None:
        raise UserError(
            f"{path} defines neither `dataset = Dataset()` nor `measures = Measures()`: "
            "a definition file makes at least one of them"
        )
    definition = definition_of(dataset, measures)
    n.validate(definition)
    document = serial.to_json(definition)
    serial.from_json(document)  # what the service will check, checked here first
    return document


def _run_definition(path: Path) -> dict[str, Any]:
    """Run the researcher's file from its own folder (so codelist paths are relative to it)."""
    folder = path.resolve().parent
    before = Path.cwd()
    os.chdir(folder)
    try:
        return runpy.run_path(str(path.resolve()), run_name="gpdpr_definition")
    except UserError:
        raise
    except SyntaxError as error:
        raise UserError(f"{path.name}:{error.lineno}: {error.msg}") from None
    except Exception as error:  # the researcher's code: report where it failed, plainly
        line = _line_in(error, path)
        raise UserError(
            f"{path.name}{f':{line}' if line else ''}: {type(error).__name__}: {error}"
        ) from None
    finally:
        os.chdir(before)


def _line_in(error: BaseException, path: Path) -> int | None:
    trace, line = error.__traceback__, None
    while trace is not None:
        if Path(trace.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = trace.tb_lineno
        trace = trace.tb_next
    return line


# ---- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    files: dict[str, bytes]  # file name -> CSV, after disclosure control
    rows: dict[str, int]
    cells: list[disclosure.Cell]


def control(definition: n.Definition, results: Results) -> Outputs:
    """The files a run may release: each measure and each aggregate table, controlled."""
    rule: disclosure.Rule = "midpoint6" if definition.disclosure == "midpoint6" else "round5"
    files: dict[str, bytes] = {}
    rows: dict[str, int] = {}
    cells: list[disclosure.Cell] = []
    for name, raw in results.measures.items():
        file = f"measure_{name}.csv"
        named = raw.add_column(0, "measure", pa.array([name] * raw.num_rows, pa.string()))
        table, made = disclosure.control_measure(named, file, rule)
        files[file], rows[file] = disclosure.render_csv(table), table.num_rows
        cells += made
    for aggregate in definition.tables:
        file = f"table_{aggregate.name}.csv"
        assert results.dataset is not None
        raw = _table_of(results.dataset, aggregate)
        table, made = disclosure.control_table(raw, list(aggregate.by), file, rule)
        files[file], rows[file] = disclosure.render_csv(table), table.num_rows
        cells += made
    return Outputs(files, rows, cells)


def _table_of(dataset: pa.Table, table: n.AggregateTable) -> pa.Table:
    """Stopgap (branch boundary, issue 17) until release control makes aggregate tables from
    the dataset (SEAMS 1): patients and statistics per group, groups in order, nulls last, as
    the engines used to compute them."""
    keys = list(zip(*(dataset.column(c).to_pylist() for c in table.by), strict=True))
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    ordered = sorted(groups, key=lambda key: tuple((v is None, v) for v in key))
    columns: dict[str, pa.Array] = {
        name: pa.array([key[i] for key in ordered], dataset.schema.field(name).type)
        for i, name in enumerate(table.by)
    }
    columns["patients"] = pa.array([len(groups[key]) for key in ordered], pa.int64())
    for variable, statistic in table.statistics:
        values = dataset.column(variable).to_pylist()
        made = []
        for key in ordered:
            known = [float(values[i]) for i in groups[key] if values[i] is not None]
            if statistic == "mean":
                made.append(statistics.fmean(known) if known else None)
            elif statistic == "median":
                made.append(statistics.median(known) if known else None)
            else:
                made.append(statistics.stdev(known) if len(known) > 1 else None)
        columns[f"{variable}_{statistic}"] = pa.array(made, pa.float64())
    return pa.table(columns)


def refuse_empty(results: Results) -> None:
    if results.dataset is not None and results.dataset.num_rows == 0:
        raise UserError(
            "the population is empty: no patient in this view meets `define_population`. "
            "Check the conditions (and dates) against the dummy data with --dummy"
        )
    empty = [name for name, table in results.measures.items() if table.num_rows == 0]
    if empty:
        raise UserError(
            f"no patient is in any denominator of {', '.join(empty)}: check the denominator "
            "and the intervals"
        )


# ---- real runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    reference: str
    lake_version: int
    folder: Path
    outputs: dict[str, dict[str, Any]]


def submit(
    home: Path,
    handle: str,
    agreement_ref: str,
    document: bytes,
    engine: Engine | None = None,
    lake_version: int | None = None,
    at: datetime | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> RunRecord:
    """Run a JSON definition under an agreement (see the module's docstring for the steps)."""
    from gpdpr.tre.release.checking import record_run

    engine = engine or DuckDBEngine()
    started = at or now()
    definition = serial.from_json(document)
    text = document.decode()
    sha = serial.sha256(document)
    used = n.columns_used(definition)
    database = connect(url_for_home(home))
    if not (home / "lake").exists():
        raise UserError(f"no lake at {home / 'lake'}: nothing has been collected yet")
    lake = Lake.open(home / "lake")
    version = lake.version(lake_version).number  # names the version; reads no data

    def record(
        status: str,
        message: str,
        outputs: dict[str, dict[str, Any]],
        read: tuple[bytes, pa.ChunkedArray] | None = None,
    ) -> str:
        """Record the run; with `read` (the project key, the people's project pseudonyms),
        also whose records it read, for their own view (gpdpr.transparency.patient)."""
        with Session(database) as session, session.begin():
            made = record_run(
                session,
                handle,
                agreement_ref,
                text,
                sha,
                version,
                engine.name,
                definition.disclosure,
                status,
                message,
                outputs,
                started,
                now(),
            )
            if read is not None:
                keep_run_uses(session, made.id, made.reference, *read)
            return made.reference

    with Session(database) as session, session.begin():
        expire_due(session, started)
    try:
        with Session(database) as session:
            scope = authorise(session, handle, agreement_ref, views.required_fields(used), started)
    except UserError as refusal:
        _record_refusal(record, refusal)
        raise
    progress("building the project's views")
    built, key = _views_and_key(home, database, scope, handle, used, version)
    progress(f"running on {engine.name}")
    results = engine.run(definition, built)
    try:
        refuse_empty(results)
    except UserError as refusal:
        record("refused", str(refusal), {})
        raise
    progress("disclosure control")
    outputs = control(definition, results)
    read = (key, built["patients"].column(PATIENT_ID))
    return _keep(home, outputs, text, lambda about: record("succeeded", "", about, read), version)


def project_views(
    home: Path,
    database: sa.Engine,
    scope: Scope,
    handle: str,
    used: Mapping[str, Iterable[str]],
    lake_version: int,
) -> dict[str, pa.Table]:
    """The views a run under `scope` sees: opt-outs applied as of now (a Type 1 awaiting
    erasure always; the National Data Opt-out unless the agreement is exempt), pseudonyms under
    the project's key, which the custodian derives (the environment never holds the keys)."""
    return _views_and_key(home, database, scope, handle, used, lake_version)[0]


def _views_and_key(
    home: Path,
    database: sa.Engine,
    scope: Scope,
    handle: str,
    used: Mapping[str, Iterable[str]],
    lake_version: int,
) -> tuple[dict[str, pa.Table], bytes]:
    from gpdpr.custodian.central import Custodian
    from gpdpr.optout.registry import Registry

    registry = Registry(database)
    excluded = registry.active_type1()
    if scope.national_data_opt_out_applied:
        excluded |= registry.active_ndoo()
    key = Custodian(home / "keys", database).project_key(scope.application, actor=handle)
    view_scope = views.ViewScope(
        scope.data_from, scope.data_to, scope.population, frozenset(excluded)
    )
    snapshot = Lake.open(home / "lake").snapshot(lake_version)
    return views.build(snapshot, view_scope, used, key), key


def _record_refusal(
    record: Callable[[str, str, dict[str, dict[str, Any]]], str], refusal: UserError
) -> None:
    """Keep a refused run in the record when there is an agreement and a person to keep it
    under; a typo in either is only an error."""
    with contextlib.suppress(UserError):
        record("refused", str(refusal), {})


def _keep(
    home: Path,
    outputs: Outputs,
    definition_text: str,
    record: Callable[[dict[str, dict[str, Any]]], str],
    lake_version: int,
) -> RunRecord:
    """Write the outputs aside, record the run, then move them to the run's folder: a crash
    leaves either no run or a complete one (and at worst a stray folder to tidy)."""
    runs = home / RUNS
    pending = runs / f".pending-{uuid.uuid4().hex}"
    (pending / OUTPUTS).mkdir(parents=True)
    about: dict[str, dict[str, Any]] = {}
    for name, body in outputs.files.items():
        (pending / OUTPUTS / name).write_bytes(body)
        about[name] = {
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
            "rows": outputs.rows[name],
        }
    (pending / CELLS).write_bytes(orjson.dumps([asdict(c) for c in outputs.cells]))
    (pending / DEFINITION).write_text(definition_text)
    try:
        reference = record(about)
    except BaseException:
        shutil.rmtree(pending)
        raise
    final = runs / reference
    pending.rename(final)
    return RunRecord(reference, lake_version, final, about)


def cells_of(home: Path, run_reference: str, files: set[str]) -> list[disclosure.Cell]:
    """The raw cells behind a run's files (for the differencing check of a release request)."""
    path = home / RUNS / run_reference / CELLS
    if not path.exists():
        raise UserError(f"the run {run_reference} has no outputs in {path.parent}")
    return [disclosure.Cell(**c) for c in orjson.loads(path.read_bytes()) if c["file"] in files]


def run_folder(home: Path, run_reference: str) -> Path:
    return home / RUNS / run_reference


def database_for(home: Path) -> sa.Engine:
    return connect(url_for_home(home))
