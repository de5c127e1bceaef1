"""Running a definition: on dummy data while developing, or for real under an agreement.

A real run, in order, and nothing read before the step that needs it:
  1. the JSON definition is parsed and checked (types, codes, what it releases);
  2. the agreement is asked (`governance.agreements.authorise`) for exactly the fields the
     definition reads, for this person, now: refused if expired, revoked or out of scope;
  3. the project's views are built from one lake version (period, population, opt-outs,
     project pseudonyms);
  4. the engine computes, within the engine's sandbox and its time and memory limits;
  5. disclosure control turns measures and tables into the files that may be asked for; the
     raw counts behind each published number stay inside, for the differencing check;
  6. the run is recorded, with its definition, lake version and files, and logged publicly;
     in its folder, a token per person it read, for their own view (gpdpr.transparency.uses).
Outputs wait in HOME/tre/runs/RUN-.../outputs until two checkers release them.

No oracle before release. What a researcher learns of a real run before anything is released
must not depend on the data except through outputs that have passed disclosure control: so an
empty population is not an error on real data (it gives outputs with nothing published, as any
small population does; only dummy runs say "empty", where nothing is real), and an engine that
fails tells the researcher only that the run failed (a failure can depend on the data: an
overflow on one person's value, a time limit), while the error itself is kept for the service's
staff in the run's record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import runpy
import shutil
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

from gpdpr.collect import erase_beyond
from gpdpr.db import connect, url_for_home
from gpdpr.db.models import now
from gpdpr.errors import UserError
from gpdpr.governance.agreements import Scope, authorise, expire_due
from gpdpr.lake.store import Lake
from gpdpr.transparency import uses
from gpdpr.tre import scratch, views
from gpdpr.tre.engines.base import Engine, LakeViews, Results
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import Dataset, Measures, definition_of
from gpdpr.tre.release import disclosure
from gpdpr.tre.release.control import Outputs as Outputs
from gpdpr.tre.release.control import control as control

RUNS = "tre/runs"
OUTPUTS = "outputs"
CELLS = "cells.json"  # raw counts: inside the environment only
DEFINITION = "definition.json"
RUN_REFERENCE = re.compile(r"RUN-[0-9]{6,}")
PENDING = ".pending-"  # a run's folder until it is recorded: .pending-PID-RANDOM


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
    path = path.resolve()  # before the folder changes: a relative path means from here
    before = Path.cwd()
    os.chdir(path.parent)
    try:
        return runpy.run_path(str(path), run_name="gpdpr_definition")
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


def refuse_empty(results: Results) -> None:
    """On dummy data only: say plainly that a definition selects nobody (on real data that
    would be an answer about people given before any disclosure control)."""
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
        then: Callable[[str], None] | None = None,
    ) -> str:
        """Record the run; `then`, given the run's reference, runs before the record commits
        (a failure undoes it)."""
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
            if then is not None:
                then(made.reference)
            return made.reference

    with Session(database) as session, session.begin():
        expire_due(session, started)
    try:
        with Session(database) as session:
            scope = authorise(session, handle, agreement_ref, views.required_fields(used), started)
    except UserError as refusal:
        _record_refusal(record, refusal)
        raise
    progress("planning the project's views")
    since = erase_beyond.mark(database)  # before the registry is read: see `keep_uses`
    planned = _planned_views(home, database, scope, handle, used, version)
    progress(f"running on {engine.name}")
    try:
        results = engine.run(definition, planned)
    except Exception as error:  # the engine's words may carry data: kept, not shown
        reference = record("failed", f"{type(error).__name__}: {error}"[:2000], {})
        raise UserError(
            f"{reference} failed inside the research environment. What went wrong may depend on "
            "the data, so it is not shown here; it is kept in the run's record for the service's "
            "staff, who will contact you. Check the definition on dummy data (--dummy) first."
        ) from None
    progress("disclosure control")
    outputs = control(definition, results)
    read = results.uses
    assert read is not None  # an engine given a plan says whom it read
    progress("keeping whom the run read, for each person's own view")

    def keep_uses(folder: Path) -> None:
        # Someone who opted out since the views were planned, and whose erasure cycle may have
        # run already (sweeping only recorded runs), leaves no token here.
        uses.keep(folder, read)
        erase_beyond.forget_since(home / "keys", database, scope.application, folder, since)

    kept = _keep(
        home,
        outputs,
        text,
        lambda about, then: record("succeeded", "", about, then),
        version,
        keep_uses,
    )
    # And once recorded: a cycle that ran while the record was being made did not see it.
    erase_beyond.forget_since(home / "keys", database, scope.application, kept.folder, since)
    return kept


def project_views(
    home: Path,
    database: sa.Engine,
    scope: Scope,
    handle: str,
    used: Mapping[str, Iterable[str]],
    lake_version: int,
) -> dict[str, pa.Table]:
    """The views a run under `scope` sees, made: opt-outs applied as of now (a Type 1 awaiting
    erasure always; the National Data Opt-out unless the agreement is exempt), pseudonyms under
    the project's key, which the custodian derives (the environment never holds the keys)."""
    return views.made(_planned_views(home, database, scope, handle, used, lake_version))


def _planned_views(
    home: Path,
    database: sa.Engine,
    scope: Scope,
    handle: str,
    used: Mapping[str, Iterable[str]],
    lake_version: int,
) -> LakeViews:
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
    return views.plan(snapshot, view_scope, used, key)


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
    record: Callable[[dict[str, dict[str, Any]], Callable[[str], None]], str],
    lake_version: int,
    keep_uses: Callable[[Path], object],
) -> RunRecord:
    """Write the outputs aside, then record the run, writing whom it read (`keep_uses`, given
    the folder) and moving them all to the run's folder before the
    record commits: a failure (the folder taken, a full disk) records no run and leaves no
    files; a crash leaves either no run or a complete one (and at worst a stray folder)."""
    runs = home / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    _tidy_pending(runs)
    pending = runs / f"{PENDING}{os.getpid()}-{uuid.uuid4().hex}"
    try:
        (pending / OUTPUTS).mkdir(parents=True)
        about: dict[str, dict[str, Any]] = {}
        for name, body in outputs.files.items():
            (pending / OUTPUTS / name).write_bytes(body)
            about[name] = {
                "sha256": hashlib.sha256(body).hexdigest(),
                "bytes": len(body),
                "rows": outputs.rows[name],
                "cells_sha256": disclosure.cells_digest(
                    [c for c in outputs.cells if c.file == name]
                ),
            }
        (pending / CELLS).write_bytes(orjson.dumps([asdict(c) for c in outputs.cells]))
        (pending / DEFINITION).write_text(definition_text)

        def move(reference: str) -> None:
            final = runs / reference
            if final.exists():
                raise UserError(
                    f"{final} is already there, though no run {reference} was recorded: nothing "
                    "was run or kept; tell the service's staff, who will move it aside"
                )
            keep_uses(pending)
            pending.rename(final)

        reference = record(about, move)
        final = runs / reference
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    return RunRecord(reference, lake_version, final, about)


def tidy(home: Path) -> None:
    """Remove the folders runs killed part-way left in the home (see `_tidy_pending`); the
    erasure cycle calls it, so that none outlives it holding someone erased."""
    if (home / RUNS).is_dir():
        _tidy_pending(home / RUNS)


def _tidy_pending(runs: Path) -> None:
    """Remove what a run killed mid-way left (`.pending-PID-...` of a process that is gone):
    a run that was not recorded never happened, and its files must not linger."""
    for stray in runs.glob(f"{PENDING}*"):
        pid = stray.name[len(PENDING) :].split("-", 1)[0]
        if not pid.isdigit() or not scratch.alive(int(pid)):
            shutil.rmtree(stray, ignore_errors=True)


def cells_of(home: Path, run_reference: str, files: set[str]) -> list[disclosure.Cell]:
    """The raw cells behind a run's files (for the differencing check of a release request)."""
    path = run_folder(home, run_reference) / CELLS
    if not path.exists():
        raise UserError(f"the run {run_reference} has no outputs in {path.parent}")
    return [disclosure.cell_of(c) for c in orjson.loads(path.read_bytes()) if c["file"] in files]


def run_folder(home: Path, run_reference: str) -> Path:
    """A run's folder. The reference is checked to be one (RUN- and digits) before it becomes
    part of a path: it comes from a command line or a web form."""
    if not RUN_REFERENCE.fullmatch(run_reference):
        raise UserError(f"{run_reference!r} is not a run reference (RUN- and six digits)")
    return home / RUNS / run_reference


def visible_outputs(
    session: Session, home: Path, handle: str, run_reference: str
) -> dict[str, bytes | None]:
    """The outputs of a run as its team sees them inside the environment, before any release:
    each file, unless its cells could be subtracted from cells this person or their
    organisation has seen, or anyone has released (then None: withheld). What is shown is
    remembered as seen, so that a later run cannot be set beside it unseen. Only a member of
    the project's team, while the agreement is in force."""
    from gpdpr.governance.people import person
    from gpdpr.tre.release import differencing
    from gpdpr.tre.release.checking import run_of

    run = run_of(session, run_reference)
    authorise(session, handle, run.agreement.reference, {}, now())
    viewer = person(session, handle)
    if run.status != "succeeded":
        return {}
    folder = run_folder(home, run.reference) / OUTPUTS
    cells = cells_of(home, run.reference, set(run.outputs))
    shown: dict[str, bytes | None] = {}
    for name in sorted(run.outputs):
        mine = [c for c in cells if c.file == name]
        try:
            differencing.check(session, viewer.id, mine)
        except differencing.DifferencingRisk:
            shown[name] = None
            continue
        body = (folder / name).read_bytes()
        if hashlib.sha256(body).hexdigest() != run.outputs[name]["sha256"]:
            raise UserError(
                f"{name} of {run.reference} is not the file the run wrote: it has changed "
                "since; tell the service's staff"
            )
        differencing.remember(session, viewer.id, run.id, mine, released=False)
        shown[name] = body
    return shown


def database_for(home: Path) -> sa.Engine:
    return connect(url_for_home(home))
