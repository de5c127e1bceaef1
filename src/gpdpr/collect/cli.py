"""`gpdpr collect`, `gpdpr erase` and `gpdpr lake`: the central collector's commands."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.progress import bar
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from gpdpr.collect.service import Central, Collection, Cycle

lake_app = typer.Typer(
    rich_markup_mode=None,
    help="The pseudonymised lake: its versions and tables.",
    no_args_is_help=True,
)


def collect_command(
    packages: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PACKAGE_FOLDER",
            help="Package folders. Default: every package in HOME/inbox.",
        ),
    ] = None,
    home: Home = DEFAULT_HOME,
    remove_inputs: Annotated[
        bool,
        typer.Option(
            "--remove-inputs",
            help="Delete package folders given from outside HOME too, each once its load is "
            "committed (or its refusal recorded). Without it they are left as they were.",
        ),
    ] = False,
) -> None:
    """Verify packages and load the trusted ones into the lake in one atomic commit; the reason
    for each refused package is kept in HOME/rejected. Packages in HOME/inbox are deleted once
    loaded; packages given from elsewhere are left where they are (see --remove-inputs), and a
    package already loaded is never loaded twice."""
    from gpdpr.collect.service import Central, finish_refusals, sweep_loaded
    from gpdpr.errors import UserError

    if (home / "inbox").is_dir():
        sweep_loaded(home / "inbox")
    try:
        finish_refusals(Central(home))
    except UserError as exc:
        fail(str(exc))
    folders = packages or sorted(
        p for p in (home / "inbox").glob("*") if p.is_dir() and not p.name.startswith(".")
    )
    if not folders:
        fail(f"no packages given and none in {home / 'inbox'}: name the package folders")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_collect(Central(home), folders, console, remove_inputs)
    except UserError as exc:
        fail(str(exc))
    render_collection(result, console)
    if result.refused:
        raise typer.Exit(1)


def run_collect(
    central: Central, folders: list[Path], out: Console, remove_inputs: bool = False
) -> Collection:
    """`collect`, showing its progress: packages verified, then rows loaded."""
    from gpdpr.collect.service import collect

    with bar(out, transient=True) as progress:
        checking = progress.add_task("verifying packages", total=len(folders))
        loading = progress.add_task("loading", total=None, visible=False)

        def loaded(table: str, rows: int) -> None:
            progress.update(loading, visible=True, advance=rows, description=f"loading {table}")

        return collect(
            central,
            folders,
            on_progress=loaded,
            on_checked=lambda _: progress.advance(checking),
            remove_inputs=remove_inputs,
        )


def render_collection(result: Collection, out: Console) -> None:
    if result.loaded:
        table = Table(title="Packages collected", title_justify="left")
        for column in ("practice", "kind", "package", "rows loaded", "Type 1 dropped"):
            table.add_column(
                column, justify="right" if "rows" in column or "Type" in column else "left"
            )
        table.add_column("replaced / deleted", justify="right")
        table.add_column("outcome")
        for loaded in sorted(result.loaded, key=lambda x: (x.practice, x.package_id)):
            outcome = (
                f"already loaded (lake version {loaded.already_in})"
                if loaded.already_in is not None
                else "[green]loaded[/]"
            )
            table.add_row(
                loaded.practice,
                loaded.kind,
                loaded.package_id[:8],
                f"{loaded.total:,}",
                f"{loaded.type1_dropped:,}",
                f"{loaded.replaced:,} / {loaded.deleted:,}",
                outcome,
            )
        out.print(table)
    for refused in result.refused:
        where = f" (reason kept in {refused.moved_to})" if refused.moved_to else ""
        # Not wrapped: a terminal keeps the path whole (to copy), and the reason reads as one.
        # Escaped: a folder's or a file's name in a package is not markup.
        said = escape(f"{refused.folder.name}{where}: {refused.reason}")
        out.print(f"[bold red]refused[/] {said}", soft_wrap=True)
    if result.version is not None:
        out.print(
            f"lake version [bold]{result.version.number}[/] committed; Type 1 opt-outs from "
            f"practices: {result.type1_set:,} set, {result.type1_withdrawn:,} withdrawn"
        )
    elif result.loaded:
        out.print(
            "nothing new: every package was already loaded; the lake and the log are unchanged"
        )
    if result.left:
        out.print(left_behind(result.left), soft_wrap=True, markup=False, highlight=False)


def left_behind(left: list[Path]) -> str:
    """The one warning about packages `collect` was given from outside its home and kept."""
    where = sorted({str(folder.parent) for folder in left})
    count = f"{len(left):,} package folder{'s' if len(left) != 1 else ''}"
    return (
        f"Left as they were: {count} in {', '.join(where)}. They hold pseudonymised records "
        "that the erasure cycle cannot reach, so someone who opts out stays in them. Delete "
        "them once you no longer need them (collecting them again loads nothing twice), or "
        "run `gpdpr collect --remove-inputs` to have each one deleted once its load is "
        "committed."
    )


def erase_command(home: Home = DEFAULT_HOME) -> None:
    """Run the erasure cycle: everyone with an active Type 1 opt-out is deleted from every lake
    table and their old files physically removed; each new opt-out gets a deletion receipt."""
    from gpdpr.collect.service import Central, erase_cycle
    from gpdpr.errors import UserError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cycle = erase_cycle(Central(home))
    except UserError as exc:
        fail(str(exc))
    render_cycle(cycle, console)


def render_cycle(cycle: Cycle, out: Console) -> None:
    erasure = cycle.erasure
    if erasure.version is None:
        out.print("erasure cycle: no one awaiting erasure and nothing of anyone opted out held")
        render_beyond(cycle, out)
        return
    table = Table(title="Erasure cycle", title_justify="left")
    table.add_column("table")
    table.add_column("rows erased", justify="right")
    for name, rows in sorted(erasure.by_table().items()):
        table.add_row(name, f"{rows:,}")
    out.print(table)
    out.print(
        f"{len(erasure.by_person):,} people's rows removed ({erasure.rows_removed:,} rows, "
        f"{erasure.files_rewritten:,} files rewritten); {erasure.files_deleted:,} old files "
        f"physically deleted; lake version [bold]{erasure.version.number}[/]; "
        f"{cycle.receipts:,} deletion receipts recorded"
    )
    render_beyond(cycle, out)


def render_beyond(cycle: Cycle, out: Console) -> None:
    """What the cycle did outside the lake, what it keeps there (naming no one), and what it
    could not reach."""
    beyond = cycle.beyond
    if cycle.erasure.version is not None:
        say(
            out,
            f"Beyond the lake: {counted(beyond.tokens, 'use token')} removed from the records "
            f"of whom {counted(beyond.runs, 'research run')} read. Kept, naming no one: run "
            "outputs and the counts behind them, released files, dummy data (synthetic), the "
            "public log (totals only); the opt-outs themselves and their receipts.",
        )
    if beyond.refusals:
        say(
            out,
            f"{counted(beyond.refusals, 'refusal')} a killed `gpdpr collect` left staged "
            "finished: only their reasons and manifest summaries are kept.",
        )
    if beyond.scratch:
        say(
            out,
            f"{counted(beyond.scratch, 'scratch folder')} of research engines that were "
            "stopped part-way removed from the system's temporary folder.",
        )
    if beyond.waiting:
        say(
            out,
            f"Waiting in {beyond.waiting[0].parent}: "
            f"{counted(len(beyond.waiting), 'package')}, not yet collected, which may hold "
            "people just erased. Run `gpdpr collect` now: it loads none of an opted-out "
            "person's rows and deletes each package.",
        )
    if not beyond.settled:
        say(
            out,
            "The central database's write-ahead log could not be emptied (another process "
            "held it open): it may still hold index rows just deleted. Run `gpdpr erase` again "
            "when the portal is quiet.",
        )


def counted(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def say(out: Console, text: str) -> None:
    out.print(text, soft_wrap=True, markup=False, highlight=False)


@lake_app.command("show")
def lake_show(
    home: Home = DEFAULT_HOME,
    version: Annotated[int | None, typer.Option(help="A lake version (default: latest).")] = None,
) -> None:
    """The lake's tables at a version: rows, files and size on disk."""
    from gpdpr.collect.service import Central
    from gpdpr.errors import UserError
    from gpdpr.lake.tables import LEDGER

    folder = Central(home).lake_folder
    if not folder.exists():
        fail(f"there is no lake at {folder}: run `gpdpr collect` first")
    try:
        from gpdpr.lake.store import Lake

        snapshot = Lake.open(folder).snapshot(version)
        table = Table(
            title=f"Lake version {snapshot.version.number} ({snapshot.version.operation}, "
            f"{snapshot.version.committed_at})",
            title_justify="left",
        )
        for column in ("table", "rows", "files", "bytes", "bytes per row"):
            table.add_column(column, justify="left" if column == "table" else "right")
        for name in [*snapshot.lake.data, LEDGER]:
            files = snapshot.files(name)
            rows, size = sum(f.rows for f in files), sum(f.size for f in files)
            per = f"{size / rows:.1f}" if rows else "-"
            table.add_row(name, f"{rows:,}", f"{len(files):,}", f"{size:,}", per)
    except UserError as exc:
        fail(str(exc))
    console.print(table)


@lake_app.command("index")
def lake_index(home: Home = DEFAULT_HOME) -> None:
    """Make the patients' collections index again from the whole lake (after upgrading a
    service whose lake was loaded before the index existed, or after a restore)."""
    from gpdpr.collect.received import rebuild
    from gpdpr.collect.service import Central
    from gpdpr.errors import UserError

    central = Central(home)
    if not central.lake_folder.exists():
        fail(f"there is no lake at {central.lake_folder}: run `gpdpr collect` first")
    try:
        rows = rebuild(central.engine(), central.lake())
    except UserError as exc:
        fail(str(exc))
    console.print(f"collections index made again: {rows:,} rows (person and package)")


@lake_app.command("compact")
def lake_compact(
    home: Home = DEFAULT_HOME,
    max_files: Annotated[
        int, typer.Option(min=1, help="Merge a practice's files of a table above this many.")
    ] = 8,
) -> None:
    """Merge the small files daily loads leave (`gpdpr erase` does this first in each cycle)."""
    from gpdpr.collect.service import Central
    from gpdpr.durable import disk_errors
    from gpdpr.errors import UserError
    from gpdpr.lake.compact import compact

    try:
        with disk_errors("compacting", "The lake is as before; free space and run it again"):
            done = compact(Central(home).lake(), max_files)
    except UserError as exc:
        fail(str(exc))
    if done.version is None:
        console.print(f"nothing to compact: no table has more than {max_files} files a practice")
    else:
        console.print(
            f"merged {done.files_merged:,} files into {done.files_written:,}; lake version "
            f"{done.version.number}"
        )
