"""`gpdpr terminology`: load a SNOMED CT release into a store, see which release is in use, and
expand an ECL expression against it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from gpdpr.terminal import console, fail

terminology_app = typer.Typer(
    rich_markup_mode=None,
    help="SNOMED CT and dm+d: load a release (RF2 Snapshot), show the one in use, expand ECL.",
    no_args_is_help=True,
)
DEFAULT_STORE = Path("gpdpr-terminology")


@terminology_app.command("load")
def load_command(
    release: Annotated[Path, typer.Argument(help="The unpacked RF2 release folder.")],
    into: Annotated[
        Path, typer.Option(help="The store folder to write (replaced whole if there).")
    ] = DEFAULT_STORE,
    name: Annotated[
        str | None, typer.Option(help="The release's name (default: from its file names).")
    ] = None,
) -> None:
    """Read an RF2 Snapshot release and write it as a terminology store. Point gpdpr at it with
    GPDPR_TERMINOLOGY=<store folder>."""
    from gpdpr.errors import UserError
    from gpdpr.terminology import store

    started = time.perf_counter()
    try:
        loaded = store.load(release, name)
        loaded.save(into, source=str(release))
    except UserError as error:
        fail(str(error))
    console.print(
        f"[green]loaded[/] {loaded.name} {loaded.version}: {loaded.ids.size:,} concepts, "
        f"{loaded.descriptions.num_rows:,} descriptions, {loaded.isa.num_rows:,} is-a "
        f"relationships, {loaded.refsets.num_rows:,} refset members, "
        f"{loaded.associations.num_rows:,} historical associations, into {into} in "
        f"{time.perf_counter() - started:.1f} s. Use it with GPDPR_TERMINOLOGY={into}",
        highlight=False,
    )


@terminology_app.command("show")
def show_command() -> None:
    """The release gpdpr decides codes by now."""
    from gpdpr.errors import UserError
    from gpdpr.terminology import store

    try:
        release = store.active()
    except UserError as error:
        fail(str(error))
    where = "embedded in gpdpr" if release.embedded else f"the store {store.location()}"
    console.print(
        f"{release.name} {release.version} ({where}): {release.ids.size:,} concepts",
        highlight=False,
    )


@terminology_app.command("expand")
def expand_command(
    expression: Annotated[str, typer.Argument(help="An ECL expression, e.g. '<< 73211009'.")],
    limit: Annotated[int, typer.Option(help="Show at most this many concepts.")] = 50,
) -> None:
    """The concepts an ECL expression stands for in the release in use, with their terms."""
    from gpdpr.errors import UserError
    from gpdpr.terminology import sets, store

    try:
        release = store.active()
        codes = sorted(sets.expand(expression, release), key=int)
    except UserError as error:
        fail(str(error))
    console.print(f"{len(codes):,} concepts in {release.name} {release.version}", highlight=False)
    for code in codes[:limit]:
        console.print(f"{code}\t{release.term(int(code)) or ''}", highlight=False, soft_wrap=True)
    if len(codes) > limit:
        console.print(f"... and {len(codes) - limit:,} more (--limit)", highlight=False)
