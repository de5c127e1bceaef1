"""`gpdpr tre`: develop a definition on dummy data, run it under an agreement, ask for its
outputs to be released; output checkers review them (`gpdpr tre review ...`).

    gpdpr tre run study.py --dummy               develop: synthetic data, results shown here
    gpdpr tre compile study.py -o study.json     the JSON the service receives
    gpdpr tre submit study.py --agreement DSA-2026-0001 --as a.khan
    gpdpr tre request RUN-000001 --file measure_rate.csv --title ... --as a.khan
    gpdpr tre review approve REQ-000001 measure_rate.csv --as k.one
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from gpdpr.errors import UserError
from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail
from gpdpr.tre.review_cli import review_app

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.orm import Session

    from gpdpr.tre.engines.base import Engine
    from gpdpr.tre.runs import Outputs

tre_app = typer.Typer(
    rich_markup_mode=None,
    help="The trusted research environment: questions in, checked answers out.",
    no_args_is_help=True,
)
tre_app.add_typer(review_app, name="review")

DefinitionFile = Annotated[
    Path, typer.Argument(help="The definition: a Python file (.py) or its compiled JSON (.json).")
]
EngineName = Annotated[
    Literal["duckdb", "spark"],
    typer.Option("--engine", help="duckdb (embedded) or spark (this machine, or --spark-master)."),
]
SparkMaster = Annotated[
    str | None,
    typer.Option(
        "--spark-master",
        envvar="GPDPR_SPARK_MASTER",
        help=(
            "With --engine spark: the cluster to run on (spark://host:7077, yarn, k8s://...), "
            "whose executors see the lake at the same path [default: local[2], this machine]."
        ),
    ),
]
Actor = Annotated[
    str, typer.Option("--as", metavar="HANDLE", help="Your handle: a member of the project's team.")
]


def check_engine(name: str, spark_master: str | None) -> None:
    """Refuse, before any work, options that would be ignored."""
    if spark_master and name != "spark":
        fail("--spark-master is for --engine spark")


def engine_named(name: str, spark_master: str | None = None) -> Engine:
    from gpdpr.tre.engines.duckdb import DuckDBEngine

    if name == "duckdb":
        return DuckDBEngine()
    if name == "spark":
        from gpdpr.tre.engines.spark import SparkEngine

        return SparkEngine(master=spark_master)
    fail(f"unknown engine {name!r}: duckdb or spark")


def _compile(path: Path) -> bytes:
    from gpdpr.tre.runs import compile_file

    try:
        return compile_file(path)
    except UserError as error:
        fail(str(error))


@tre_app.command("compile")
def compile_command(
    definition: DefinitionFile,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the JSON here.")] = None,
) -> None:
    """Check a definition and write the JSON query graph the service accepts."""
    from gpdpr.tre.query.serial import sha256

    document = _compile(definition)
    if out is None:
        console.print(document.decode(), markup=False, highlight=False, soft_wrap=True)
        return
    out.write_bytes(document)
    console.print(f"{out}: {len(document):,} bytes, sha256 {sha256(document)}", markup=False)


@tre_app.command("example")
def example_command(
    folder: Annotated[Path, typer.Argument(help="A new folder to put the example in.")],
) -> None:
    """Copy an example definition (a diabetes study, with its codelists) to start from."""
    import shutil

    from gpdpr.tre.demo import example

    if folder.exists():
        fail(f"{folder} exists: give a new folder")
    shutil.copytree(example(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    _say(f"{folder / 'study.py'}: try it with gpdpr tre run {folder / 'study.py'} --dummy")


@tre_app.command("run")
def run_command(
    definition: DefinitionFile,
    dummy: Annotated[bool, typer.Option("--dummy", help="Run on synthetic dummy data.")] = False,
    patients: Annotated[int, typer.Option(help="Patients in the dummy data.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the dummy data.")] = 2021,
    data: Annotated[
        Path | None,
        typer.Option(help="Folder kept for dummy data [default: .gpdpr-dummy beside the file]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the outputs [default: output/ beside the file].")
    ] = None,
    engine: EngineName = "duckdb",
    spark_master: SparkMaster = None,
) -> None:
    """Run a definition on dummy data, to develop it before (and while) applying. Shows each
    output as it would be released (after disclosure control) and writes the files."""
    from gpdpr.tre import dummy as dummy_data
    from gpdpr.tre import runs
    from gpdpr.tre.query import nodes as n
    from gpdpr.tre.query.serial import from_json

    check_engine(engine, spark_master)
    if not dummy:
        fail(
            "a run here is on dummy data: add --dummy. To run on the real data, under an "
            "agreement, use `gpdpr tre submit`"
        )
    document = _compile(definition)
    parsed = from_json(document)
    folder = definition.resolve().parent
    try:
        lake = dummy_data.ensure(data or folder / ".gpdpr-dummy", patients, seed, say=_say)
        views = dummy_data.dummy_views(lake, n.columns_used(parsed))
        results = engine_named(engine, spark_master).run(parsed, views)
        runs.refuse_empty(results)
        outputs = runs.control(parsed, results)
    except UserError as error:
        fail(str(error))
    target = out or folder / "output"
    target.mkdir(parents=True, exist_ok=True)
    for name, body in outputs.files.items():
        (target / name).write_bytes(body)
    population = results.dataset.num_rows if results.dataset is not None else None
    _show(outputs, population)
    _say(
        f"Dummy data, {patients:,} synthetic patients: the numbers mean nothing, the shapes "
        f"do. Files written to {target}."
    )


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _show(outputs: Outputs, population: int | None) -> None:
    if population is not None:
        _say(f"Population: {population:,} patients (a dataset stays inside; tables leave).")
    for name, body in outputs.files.items():
        _show_file(name, body)


def _show_file(name: str, body: bytes) -> None:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(pa_buffer(body))
    if name.startswith("measure_"):
        _chart(name, table)
        table = table.drop_columns(["measure", "interval_end"])  # in the file; noise here
    _table(name, table)


def pa_buffer(body: bytes) -> pa.BufferReader:
    import pyarrow as pa

    return pa.BufferReader(body)


def _table(name: str, table: pa.Table, limit: int = 12) -> None:
    from rich.table import Table

    shown = Table(title=f"{name} ({table.num_rows:,} rows)", title_justify="left")
    for column in table.column_names:
        shown.add_column(column, overflow="fold")
    for row in table.slice(0, limit).to_pylist():
        shown.add_row(*("" if v is None else str(v) for v in row.values()))
    if table.num_rows > limit:
        shown.caption = f"first {limit} of {table.num_rows:,} rows"
    console.print(shown)


def _chart(name: str, table: pa.Table) -> None:
    """The measure's overall rate in each interval, across its groups, as a bar per interval
    (from released counts only: redacted groups add nothing)."""
    from rich.table import Table
    from rich.text import Text

    totals: dict[str, list[int]] = {}
    for row in table.to_pylist():
        sums = totals.setdefault(str(row["interval_start"]), [0, 0])
        if row["numerator"] is not None and row["denominator"] is not None:
            sums[0] += row["numerator"]
            sums[1] += row["denominator"]
    rates = {k: (a / b if b else None) for k, (a, b) in totals.items()}
    top = max((r for r in rates.values() if r is not None), default=0.0) or 1.0
    _say(f"{name}: rate per interval, all groups together")
    chart = Table(box=None)
    chart.add_column("interval")
    chart.add_column("rate", justify="right")
    chart.add_column("")
    for interval, rate in rates.items():
        bar = Text("█" * round(40 * (rate or 0) / top), style="cyan")
        chart.add_row(interval, "redacted" if rate is None else f"{rate:.4f}", bar)
    console.print(chart)


@tre_app.command("submit")
def submit_command(
    definition: DefinitionFile,
    agreement: Annotated[str, typer.Option(help="The agreement to run under, e.g. DSA-2026-0001.")],
    actor: Actor,
    home: Home = DEFAULT_HOME,
    engine: EngineName = "duckdb",
    spark_master: SparkMaster = None,
    lake_version: Annotated[
        int | None, typer.Option(help="Run on this lake version [default: the latest].")
    ] = None,
) -> None:
    """Run a definition on the real data under an agreement. The outputs wait, controlled,
    inside the environment until two output checkers release them."""
    from gpdpr.tre.runs import submit

    check_engine(engine, spark_master)
    document = _compile(definition)
    try:
        made = submit(
            home,
            actor,
            agreement,
            document,
            engine_named(engine, spark_master),
            lake_version,
            progress=lambda step: _say(f"… {step}"),
        )
    except UserError as error:
        fail(str(error))
    _say(f"{made.reference}: ran on lake version {made.lake_version}.")
    _show_run(home, actor, made.reference)
    _say(
        f"Ask for their release: gpdpr tre request {made.reference} --file NAME --title ... "
        f"--as {actor}"
    )


def _show_run(home: Path, actor: str, reference: str) -> None:
    """A run's outputs as its team may see them inside the environment (controlled; a file
    that could be subtracted from what you have seen is withheld)."""
    from gpdpr.tre.runs import visible_outputs

    with _session(home) as session:
        shown = visible_outputs(session, home, actor, reference)
    if not shown:
        _say(f"{reference} has no outputs to show.")
    for name, body in shown.items():
        if body is None:
            _say(
                f"{name}: withheld. Its numbers could be subtracted from results you or your "
                "organisation have seen, or that anyone has released (a differencing risk); "
                "change the groups or the population, or ask the output checkers."
            )
        else:
            _show_file(name, body)


@tre_app.command("show")
def show_command(
    run: Annotated[str, typer.Argument(help="The run, e.g. RUN-000001.")],
    actor: Actor,
    home: Home = DEFAULT_HOME,
) -> None:
    """Show a run's outputs (after disclosure control) inside the environment."""
    _show_run(home, actor, run)


@contextmanager
def _session(home: Path) -> Iterator[Session]:
    from sqlalchemy.orm import Session

    from gpdpr.tre.runs import database_for

    try:
        with Session(database_for(home)) as session, session.begin():
            yield session
    except UserError as error:
        fail(str(error))


@tre_app.command("runs")
def runs_command(actor: Actor, home: Home = DEFAULT_HOME) -> None:
    """The runs of every project you are on the team of."""
    from rich.table import Table

    from gpdpr.tre.release.checking import runs

    shown = Table("run", "agreement", "status", "lake version", "definition", "outputs")
    with _session(home) as session:
        for run in runs(session, actor):
            shown.add_row(
                run.reference,
                run.agreement.reference,
                run.status,
                str(run.lake_version),
                run.definition_sha256[:12],
                # never the message: a failed run's may carry the engine's words (data)
                ", ".join(run.outputs) or "-",
            )
    console.print(shown)


@tre_app.command("request")
def request_command(
    run: Annotated[str, typer.Argument(help="The run, e.g. RUN-000001.")],
    files: Annotated[
        list[str], typer.Option("--file", metavar="NAME", help="An output file to release.")
    ],
    title: Annotated[str, typer.Option(help="What the files show: published on the register.")],
    actor: Actor,
    description: Annotated[str, typer.Option(help="More about them, for the checkers.")] = "",
    home: Home = DEFAULT_HOME,
) -> None:
    """Ask for some of a run's outputs to be released: two output checkers review each file."""
    import hashlib

    from gpdpr.tre.release.checking import request_release
    from gpdpr.tre.runs import OUTPUTS, cells_of, run_folder

    folder = run_folder(home, run) / OUTPUTS
    found: dict[str, tuple[str, int]] = {}
    for name in files:
        path = folder / name
        if not path.is_file() or path.parent != folder:
            fail(f"{run} has no output {name!r} (in {folder})")
        body = path.read_bytes()
        found[name] = (hashlib.sha256(body).hexdigest(), len(body))
    with _session(home) as session:
        cells = cells_of(home, run, set(found))
        made = request_release(session, actor, run, found, title, description, cells)
        reference = made.reference
    _say(f"{reference}: {len(found)} file(s) await two output checkers (gpdpr tre review).")
