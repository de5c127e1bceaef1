"""`gpdpr optout`: set, withdraw or look up a person's opt-outs by NHS number, as the online
service or a proxy would. The number goes only to the custodian, which turns it into the lake
pseudonym; the registry and the event record never see it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from gpdpr.custodian.central import Custodian
    from gpdpr.optout.registry import Registry

optout_app = typer.Typer(
    rich_markup_mode=None,
    help="Opt-outs: Type 1 and the National Data Opt-out, set or withdrawn at any time.",
    no_args_is_help=True,
)

TYPES = {"1": "type1", "type1": "type1", "ndoo": "ndoo"}
NAMES = {"type1": "Type 1 opt-out", "ndoo": "National Data Opt-out"}
CLI_SOURCES = ("online", "proxy")

NhsNumber = Annotated[str, typer.Option("--nhs-number", help="The person's NHS number.")]
Kind = Annotated[
    str,
    typer.Option("--type", metavar="1|ndoo", help="1 (Type 1) or ndoo (National Data Opt-out)."),
]
Source = Annotated[
    str,
    typer.Option(metavar="online|proxy", help="online, or proxy (someone acting for the person)."),
]


def _kind(value: str) -> str:
    from gpdpr.errors import UserError

    kind = TYPES.get(value.strip().lower())
    if kind is None:
        raise UserError(f"--type must be 1 or ndoo (got {value!r})")
    return kind


def _open(home: Path) -> tuple[Custodian, Registry]:
    from gpdpr.custodian.cli import open_custodian
    from gpdpr.optout.registry import Registry

    custodian = open_custodian(home)
    return custodian, Registry(custodian.engine)


def _change(home: Path, nhs_number: str, kind: str, source: str, action: str) -> None:
    from gpdpr.errors import UserError

    try:
        kind = _kind(kind)
        if source not in CLI_SOURCES:
            raise UserError(f"--source must be online or proxy (got {source!r})")
        custodian, registry = _open(home)
        pseudonym = custodian.pseudonym_for(nhs_number, f"optout:{source}", f"opt-out {action}")
        change = registry.set if action == "set" else registry.withdraw
        changed = change(pseudonym, kind, source)
    except UserError as exc:
        fail(str(exc))
    done = "set" if action == "set" else "withdrawn"
    if changed:
        console.print(f"{NAMES[kind]} [bold]{done}[/] for this person ({source}).")
    else:
        console.print(f"{NAMES[kind]} was already {done} for this person: nothing changed.")


@optout_app.command("set")
def optout_set(
    nhs_number: NhsNumber,
    kind: Kind,
    source: Source = "online",
    home: Home = DEFAULT_HOME,
) -> None:
    """Opt a person out (Type 1: nothing more collected and what was collected erased)."""
    _change(home, nhs_number, kind, source, "set")


@optout_app.command("withdraw")
def optout_withdraw(
    nhs_number: NhsNumber,
    kind: Kind,
    source: Source = "online",
    home: Home = DEFAULT_HOME,
) -> None:
    """Withdraw a person's opt-out: they are opted back in."""
    _change(home, nhs_number, kind, source, "withdraw")


@optout_app.command("status")
def optout_status(
    nhs_number: NhsNumber,
    home: Home = DEFAULT_HOME,
) -> None:
    """A person's opt-outs now, and every change to them."""
    from gpdpr.errors import UserError

    try:
        custodian, registry = _open(home)
        pseudonym = custodian.pseudonym_for(nhs_number, "optout:status", "opt-out status")
        status = registry.status(pseudonym)
    except UserError as exc:
        fail(str(exc))
    _render(status)


@optout_app.command("resend-list")
def optout_resend_list(
    out: Annotated[Path, typer.Option(help="File to write the list to (never overwritten).")],
    since: Annotated[
        str | None,
        typer.Option(help="Only withdrawals after this time (default: every withdrawn Type 1)."),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Write the list of people whose Type 1 opt-out was withdrawn, for practices to send their
    whole record again (`gpdpr practice extract --resend FILE`)."""
    from gpdpr.db import connect, url_for_home
    from gpdpr.errors import UserError
    from gpdpr.optout.registry import Registry
    from gpdpr.practice.extract import parse_watermark
    from gpdpr.practice.resend import write_resend_list

    try:
        when = parse_watermark(since) if since else None
        people = Registry(connect(url_for_home(home))).restored_type1(when)
        write_resend_list(out, people, when)
    except UserError as exc:
        fail(str(exc))

    console.print(f"{len(people):,} people to be sent in full again, listed in {out}")


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _render(status: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    for kind, about in status.items():
        state = about["state"]
        line = f"[bold]{NAMES[kind]}[/]: {state}"
        if state != "never":
            line += f" since {_when(about['since'])} ({_origin(about)})"
        console.print(line)
    table = Table(title="History", title_justify="left")
    for column in ("when", "opt-out", "change", "source"):
        table.add_column(column)
    history = sorted(
        ((kind, e) for kind, about in status.items() for e in about["history"]),
        key=lambda item: (item[1]["effective_at"], item[1]["id"]),
    )
    for kind, e in history:
        table.add_row(_when(e["effective_at"]), NAMES[kind], e["action"], _origin(e))
    if history:
        console.print(table)
    else:
        console.print("No opt-out has ever been recorded for this person.")


def _origin(about: dict[str, Any]) -> str:
    ref = about["source_ref"]
    return about["source"] if ref is None else f"{about['source']} {ref}"
