"""The `gpdpr` command."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.progress import bar
from gpdpr.terminal import console, fail

# The commands in the order a service is run, not the order they happen to be defined in.
WORKFLOW = [
    "init",
    "terminology",
    "custodian",
    "practice",
    "collect",
    "optout",
    "erase",
    "lake",
    "governance",
    "tre",
    "portal",
    "log",
    "demo",
    "synth",
]


class _InWorkflowOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)  # typer.Context: its click is its own
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))

    def invoke(self, ctx: Any) -> Any:
        # Every command: a full disk or a refused permission is a message, not a traceback.
        with durable.disk_messages(_command_name(self, ctx), fail):
            return super().invoke(ctx)


def _command_name(group: TyperGroup, ctx: Any) -> str:
    """`gpdpr COMMAND` or `gpdpr GROUP COMMAND`, as typed (for a message)."""
    words = [*getattr(ctx, "_protected_args", []), *ctx.args]
    if not words:
        return "gpdpr"
    command = group.get_command(ctx, words[0])
    if isinstance(command, TyperGroup) and len(words) > 1 and not words[1].startswith("-"):
        return f"gpdpr {words[0]} {words[1]}"
    return f"gpdpr {words[0]}"


app = typer.Typer(
    rich_markup_mode=None,
    cls=_InWorkflowOrder,
    help="gpdpr: a national GP data service built to be trusted.\n\n"
    "The commands below are in the order a service is run: `init` a home, the `custodian`'s "
    "keys, each `practice`'s extract, `collect` into the lake, `optout` and `erase`, "
    "`governance` of applications, the research environment (`tre`), the `portal`, and the "
    "public `log` of it all. `demo` runs the whole of it on synthetic data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"gpdpr {version('gpdpr')}", highlight=False)
        except PackageNotFoundError:  # run from a source tree that was never installed
            console.print("gpdpr (not installed: version unknown)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and stop."
        ),
    ] = False,
) -> None:
    """The options of `gpdpr` itself, before any command."""


DEMO_PRACTICES = 20
DEMO_PATIENTS = 60_000
DEMO_SEED = 2021


def _run_synth(
    out: Path,
    practices: int,
    patients: int,
    seed: int,
    fmt: str,
    as_of: date,
    mess_rate: float | None,
    workers: int,
) -> None:
    from gpdpr.synth import report
    from gpdpr.synth.run import SynthRequest, synthesise, validate

    request = SynthRequest(out, practices, patients, seed, fmt, as_of, mess_rate, workers)
    # A polite stop (SIGTERM) unwinds like Ctrl-C, so the staging folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        validate(request)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("synthesising practices", total=practices, rows=0)

            def done(practice: object) -> None:
                rows = sum(getattr(practice, "rows", {}).values())
                progress.update(task, advance=1, rows=progress.tasks[task].fields["rows"] + rows)

            summary, nation = synthesise(request, on_practice_done=done)
    except UserError as exc:
        fail(str(exc))
    report.render(summary, nation, console)


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"--as-of must be a date like 2026-10-31 (got {text!r})")
        raise  # unreachable: fail exits


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to create; one sub-folder per practice.")],
    practices: Annotated[int, typer.Option(help="Number of GP practices.")] = 10,
    patients: Annotated[int, typer.Option(help="Patient records across all practices.")] = 10_000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same nation.")] = 1,
    format: Annotated[
        Literal["fhir", "columnar"],
        typer.Option("--format", help="fhir (NDJSON) or columnar (Parquet)."),
    ] = "fhir",
    as_of: Annotated[
        str, typer.Option(help="Extract date: records run up to this day.")
    ] = "2026-10-31",
    mess_rate: Annotated[
        float | None, typer.Option(help="Share of records with a planted data-quality fault.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (0: one per core).")] = 0,
) -> None:
    """Generate synthetic GP practices: realistic records, deterministic for a seed."""
    _run_synth(out, practices, patients, seed, format, _parse_date(as_of), mess_rate, workers)


DEMO_MARKER = ".gpdpr-demo"
STEPS = 8


def _clear_demo_home(home: Path) -> None:
    """Remove the demo's own earlier output, and only that."""
    from gpdpr.synth.run import SUMMARY_FILE

    practices = home / "practices"
    if practices.exists() and not (practices / SUMMARY_FILE).exists():
        fail(f"{practices} exists but was not made by the demo; move it away or pass --home")
    parts = [
        practices,
        home / "keys",
        home / "custodian",
        home / "packages",
        home / "lake",
        home / "rejected",
        home / "register",
        home / "tre",
        home / "log",
        home / ".log-tree",
        home / "witness",
        home / "idp",
        home / "portal",
    ]
    if any(p.exists() for p in parts[1:]) and not (home / DEMO_MARKER).exists():
        fail(f"{home} holds keys or packages the demo did not make; move them away or pass --home")
    for part in parts:
        if part.exists():
            shutil.rmtree(part)
    for database in home.glob("central.db*"):
        database.unlink()
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by gpdpr demo; its sub-folders are rebuilt each run\n")


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Folder the demo works in.")] = Path("gpdpr-demo"),
    serve: Annotated[
        bool, typer.Option(help="End by serving the portal until stopped (Ctrl-C).")
    ] = True,
    host: Annotated[str, typer.Option(help="Address the portal listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the portal listens on.")] = 8000,
) -> None:
    """Run the scheme end to end on the embedded defaults: a synthetic nation; every practice's
    extract, pseudonymised and signed; the centre's collection into the lake; opt-outs and
    erasure; governance, from applications to the public Data Uses Register; a study in the
    research environment through output checking; the public log, verified; then the portal,
    served with demo accounts."""
    if serve:
        _check_port_free(host, port)
    _clear_demo_home(home)
    practices = home / "practices"
    console.rule(f"[bold]gpdpr demo 1/{STEPS}: a synthetic nation of GP practices")
    _run_synth(
        practices, DEMO_PRACTICES, DEMO_PATIENTS, DEMO_SEED, "columnar", date(2026, 10, 31), None, 0
    )
    console.rule(
        f"[bold]gpdpr demo 2/{STEPS}: each practice extracts what the specification allows"
    )
    _demo_extract(home, practices)
    console.rule(
        f"[bold]gpdpr demo 3/{STEPS}: the centre verifies every package and loads the lake"
    )
    _demo_collect(home)
    console.rule(f"[bold]gpdpr demo 4/{STEPS}: opting out online, and the erasure cycle")
    _demo_erase(home, practices)
    console.rule(f"[bold]gpdpr demo 5/{STEPS}: applications, the independent panel, the register")
    _demo_governance(home)
    console.rule(
        f"[bold]gpdpr demo 6/{STEPS}: a study runs in the research environment; two checkers"
    )
    _demo_research(home)
    console.rule(
        f"[bold]gpdpr demo 7/{STEPS}: everything that happened, in the public log, verified"
    )
    _demo_log(home)
    _say(
        "Look around from the command line too: "
        f"gpdpr lake show --home {home}; gpdpr governance applications --home {home}; "
        f"gpdpr tre runs --as r.okafor --home {home}; gpdpr log show --home {home}"
    )
    if not serve:
        _say(f"To serve the portal over this home: gpdpr portal serve --home {home}")
        return
    console.rule(f"[bold]gpdpr demo 8/{STEPS}: the portal, for the public, patients and staff")
    _demo_serve(home, host, port)


def _demo_extract(home: Path, practices: Path) -> None:
    from gpdpr.custodian.keys import init, issue_practice
    from gpdpr.custodian.service import running
    from gpdpr.practice import report
    from gpdpr.practice.many import extract_many

    keys = home / "keys"
    try:
        pseudonym = init(keys)
        folders = sorted(p for p in practices.iterdir() if p.is_dir())
        with running(keys) as url:
            for folder in folders:
                issue_practice(keys, folder.name, url)
            console.print(
                f"Key custodian: pseudonym key {pseudonym.id}, its service at {url}, and "
                f"{len(folders)} practice key kits in {keys} (each: the practice's signing key "
                "and the custodian's public key; no pseudonym key), apart from the data."
            )
            with bar(console) as progress:
                task = progress.add_task("extracting practices", total=len(folders))
                manifests = extract_many(
                    folders,
                    home / "packages",
                    keys / "practices",
                    on_done=lambda *_: progress.advance(task),
                )
    except UserError as exc:
        fail(str(exc))
    report.render_many(manifests, home / "packages", console)


def _demo_collect(home: Path) -> None:
    from gpdpr.collect.cli import render_collection, run_collect
    from gpdpr.collect.service import Central

    folders = sorted(p for p in (home / "packages").iterdir() if p.is_dir())
    try:
        result = run_collect(Central(home), folders, console)
    except UserError as exc:
        fail(str(exc))
    render_collection(result, console)


def _demo_erase(home: Path, practices: Path) -> None:
    """Three people opt out online; the cycle erases them and everyone whose practice recorded a
    Type 1 dissent, and receipts each."""
    import pyarrow.parquet as pq

    from gpdpr.collect.cli import render_cycle
    from gpdpr.collect.service import Central, erase_cycle
    from gpdpr.custodian.central import Custodian
    from gpdpr.optout.registry import Registry

    central = Central(home)
    try:
        engine = central.engine()
        custodian, registry = Custodian(central.keys, engine), Registry(engine)
        first = sorted(p for p in practices.iterdir() if p.is_dir())[0]
        numbers = pq.read_table(first / "patients.parquet", columns=["nhs_number"])
        for number in numbers["nhs_number"].to_pylist()[:3]:
            registry.set(custodian.pseudonym_for(number, actor="demo"), "type1", "online")
        console.print(
            f"3 patients of {first.name} opt out online (Type 1); their NHS numbers go only to "
            "the custodian, which gives the registry their pseudonyms."
        )
        cycle = erase_cycle(central)
    except UserError as exc:
        fail(str(exc))
    render_cycle(cycle, console)


def _demo_governance(home: Path) -> None:
    """Sample applications take the paths real ones do, through the service's own functions;
    the register is then generated from what happened."""
    from rich.table import Table
    from sqlalchemy.orm import Session

    from gpdpr.db import connect, url_for_home
    from gpdpr.governance import register, sample
    from gpdpr.governance.applications import application
    from gpdpr.governance.vocabulary import STATES

    table = Table("application", "organisation", "title", "where it ended up")
    try:
        engine = connect(url_for_home(home))
        with Session(engine) as session, session.begin():
            for reference, state in sample.seed(session).items():
                app = application(session, reference)
                reason = f": {app.outcome_reason}" if state == "refused" else ""
                organisation = app.organisations[0].organisation.name
                table.add_row(reference, organisation, app.title, STATES[state] + reason)
            written = register.write(session, home / "register")
    except UserError as exc:
        fail(str(exc))
    console.print(table)
    console.print(
        f"Data Uses Register (generated, never edited): {written['html']} "
        f"(also {written['csv'].name} and {written['json'].name})"
    )


practice_app = typer.Typer(
    rich_markup_mode=None,
    help="The practice side: extract what the specification allows, pseudonymised and signed.",
    no_args_is_help=True,
)
custodian_app = typer.Typer(
    rich_markup_mode=None,
    help="The key custodian: the pseudonym service, practice kits, re-identification.",
    no_args_is_help=True,
)
app.add_typer(practice_app, name="practice")
app.add_typer(custodian_app, name="custodian")
from gpdpr.optout.cli import optout_app  # noqa: E402

app.add_typer(optout_app, name="optout")
from gpdpr.governance.cli import governance_app  # noqa: E402

app.add_typer(governance_app, name="governance")
from gpdpr.custodian.cli import reid_app  # noqa: E402

custodian_app.add_typer(reid_app, name="reidentify")
from gpdpr.collect.cli import collect_command, erase_command, lake_app  # noqa: E402

app.command("collect")(collect_command)
app.command("erase")(erase_command)
app.add_typer(lake_app, name="lake")
from gpdpr.tre.cli import tre_app  # noqa: E402

app.add_typer(tre_app, name="tre")
from gpdpr.portal.cli import portal_app  # noqa: E402

app.add_typer(portal_app, name="portal")
from gpdpr.transparency.cli import log_app  # noqa: E402

app.add_typer(log_app, name="log")
from gpdpr.terminology.cli import terminology_app  # noqa: E402

app.add_typer(terminology_app, name="terminology")


def _demo_research(home: Path) -> None:
    """The diabetes study (the shipped example definition) runs under its agreement; its
    outputs are controlled, asked for, approved by two output checkers and published."""
    from gpdpr.tre.demo import research

    try:
        research(home, _say)
    except UserError as exc:
        fail(str(exc))


def _check_port_free(host: str, port: int) -> None:
    from gpdpr.portal.cli import check_port_free

    check_port_free(host, port, "pass another --port, or --no-serve to end without serving")


def _demo_serve(home: Path, host: str, port: int) -> None:
    from gpdpr.portal.serve import serve_demo

    try:
        serve_demo(home, host, port, _say)
    except UserError as exc:
        fail(str(exc))


def _demo_log(home: Path) -> None:
    from gpdpr.transparency.demo import publish_and_verify

    try:
        publish_and_verify(home, _say)
    except UserError as exc:
        fail(str(exc))


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("init")
def init_home(
    home: Annotated[
        Path, typer.Option(envvar="GPDPR_HOME", help="The service home folder to create.")
    ] = Path("gpdpr-home"),
) -> None:
    """Start a new central service: its home folder and, in keys/, the custodian's keys (the
    pseudonym key its service evaluates, the project key, the service's signing key). Every
    other central command refuses a home that is not there."""
    from gpdpr.custodian.keys import init

    if home.exists() and any(home.iterdir()):
        fail(f"{home} already exists and is not empty: a new service needs a folder of its own")
    # Made whole aside and renamed into place, so a run cut short (a kill, a full disk) leaves
    # no half-made home that the next `init` must refuse.
    home.parent.mkdir(parents=True, exist_ok=True)
    for stale in home.parent.glob(f".{home.name}.init-*"):
        shutil.rmtree(stale, ignore_errors=True)
    aside = home.parent / f".{home.name}.init-{os.getpid()}"
    try:
        aside.mkdir()
        collection = init(aside / "keys")
        os.rename(aside, home)
        durable.fsync_dir(home.parent)
    except UserError as exc:
        fail(str(exc).replace(str(aside), str(home)))
    finally:
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
    console.print(
        f"service home {home} created, with pseudonym key [bold]{collection.id}[/] in "
        f"{home / 'keys'}. Next: issue each practice its key kit "
        f"(gpdpr custodian issue-practice ODS --keys {home / 'keys'})",
        highlight=False,
    )


@custodian_app.command("init")
def custodian_init(
    keys: Annotated[Path, typer.Option(help="Key folder to create, apart from any data.")],
) -> None:
    """Create the custodian's keys: the pseudonym key (never leaves its service), the project
    key and the service's signing key."""
    from gpdpr.custodian.keys import init

    try:
        pseudonym = init(keys)
    except UserError as exc:
        fail(str(exc))
    console.print(f"pseudonym key [bold]{pseudonym.id}[/] created in {keys}")


@custodian_app.command("issue-practice")
def custodian_issue_practice(
    ods: Annotated[str, typer.Argument(help="The practice's ODS code, e.g. Z10001.")],
    keys: Annotated[Path, typer.Option(help="The custodian's key folder.")],
    url: Annotated[
        str, typer.Option(help="Where the practice reaches the custodian's pseudonym service.")
    ] = "http://127.0.0.1:8471",
) -> None:
    """Issue a practice its key kit: a new signing key and the custodian's public key."""
    from gpdpr.custodian.keys import issue_practice

    try:
        kit = issue_practice(keys, ods, url)
    except UserError as exc:
        fail(str(exc))
    console.print(f"key kit for [bold]{kit.name}[/] written to {kit}")


@custodian_app.command("revoke-practice")
def custodian_revoke_practice(
    ods: Annotated[str, typer.Argument(help="The practice whose kit was lost or stolen.")],
    keys: Annotated[Path, typer.Option(help="The custodian's key folder.")],
) -> None:
    """Revoke a practice's keys (no package they sign is trusted again) and set its kit aside,
    so that a new one can be issued."""
    from gpdpr.custodian.keys import revoke_practice

    try:
        count = revoke_practice(keys, ods)
    except UserError as exc:
        fail(str(exc))
    console.print(
        f"{count} key(s) of [bold]{ods.strip().upper()}[/] revoked in the practice register; "
        f"issue a new kit with `gpdpr custodian issue-practice {ods.strip().upper()}`"
    )


@custodian_app.command("serve")
def custodian_serve(
    home: Home = DEFAULT_HOME,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8471,
    daily_limit: Annotated[
        int, typer.Option(help="Evaluations each practice may ask for per day (UTC).")
    ] = 60_000,
) -> None:
    """Serve the pseudonym service practices extract with (HOME/keys), until stopped."""
    from gpdpr.custodian.service import serve

    try:
        console.print(f"the custodian's pseudonym service: http://{host}:{port}/ (Ctrl-C stops)")
        serve(home / "keys", host, port, daily_limit)
    except UserError as exc:
        fail(str(exc))


def _run_extract(
    practice: Path,
    out: Path,
    keys: Path,
    since: str | None,
    spec: Path | None,
    quiet: bool,
    resend: Path | None = None,
    custodian: str | None = None,
) -> dict[str, object]:
    from gpdpr.practice.extract import ExtractRequest, extract, parse_watermark

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        request = ExtractRequest(
            practice, out, keys, parse_watermark(since) if since else None, spec, resend, custodian
        )
        with Progress(
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.fields[rows]:,} rows read"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        ) as progress:
            task = progress.add_task(f"extracting {practice.name}", rows=0)

            def advance(table: str, rows: int) -> None:
                total = progress.tasks[task].fields["rows"] + rows
                progress.update(
                    task, description=f"extracting {practice.name}: {table}", rows=total
                )

            return extract(request, on_progress=advance)
    except UserError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


@practice_app.command("extract")
def practice_extract(
    practice: Annotated[
        Path, typer.Argument(help="The practice's FHIR export or columnar extract.")
    ],
    out: Annotated[Path, typer.Option(help="Package folder to create (never overwritten).")],
    keys: Annotated[
        Path,
        typer.Option(
            envvar="GPDPR_PRACTICE_KEYS",
            help="The practice's key kit, as issued by the custodian (kept apart from data).",
        ),
    ],
    since: Annotated[
        str | None,
        typer.Option(help="Watermark: a time, or the previous package. Sends only what changed."),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(help="Another specification file (its version and hash go in the manifest)."),
    ] = None,
    resend: Annotated[
        Path | None,
        typer.Option(help="The centre's resend list: these patients are sent in full again."),
    ] = None,
    custodian: Annotated[
        str | None,
        typer.Option(
            envvar="GPDPR_CUSTODIAN_URL",
            help="The custodian's pseudonym service, if not at the address in the kit.",
        ),
    ] = None,
) -> None:
    """Extract one practice into a signed, pseudonymised package."""
    from gpdpr.practice import report

    manifest = _run_extract(
        practice, out, keys, since, spec, quiet=False, resend=resend, custodian=custodian
    )
    report.render(manifest, out, console)


@practice_app.command("verify")
def practice_verify(
    package: Annotated[Path, typer.Argument(help="An extract package folder.")],
    public_key: Annotated[Path, typer.Option(help="The practice's signing.pub.")],
) -> None:
    """Check a package's signature and every file's checksum."""
    from gpdpr.practice.kit import read_public_key
    from gpdpr.practice.package import verify

    try:
        manifest = verify(package, read_public_key(public_key))
    except UserError as exc:
        fail(str(exc))
    console.print(
        f"[green]verified[/]: package {manifest['package_id']} from "
        f"{manifest['practice']['ods_code']}, {len(manifest['files'])} files intact"
    )


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
