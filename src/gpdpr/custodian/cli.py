"""`gpdpr custodian reidentify`: request, approve, refuse and fulfil re-identification, from
named people to their pseudonyms in one project, never the other way. NHS numbers come from a
file (one per line) and the result goes to a file readable by its owner only, so numbers never
pass through the command line, the shell history or the event record."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from gpdpr.custodian.central import Custodian

reid_app = typer.Typer(
    rich_markup_mode=None,
    help="Re-identification: named people -> their project pseudonyms, with a legal basis and "
    "two approvers.",
    no_args_is_help=True,
)

Numbers = Annotated[Path, typer.Option(help="A file of NHS numbers, one per line.")]
RequestId = Annotated[int, typer.Argument(help="The request's number.")]


def open_custodian(home: Path) -> Custodian:
    """The custodian over HOME/keys and the home's central database."""
    from gpdpr.custodian.central import Custodian
    from gpdpr.db import connect, url_for_home
    from gpdpr.errors import UserError

    keys = home / "keys"
    if not keys.is_dir():
        raise UserError(
            f"no key folder at {keys}: is --home right? The custodian makes one with "
            f"`gpdpr custodian init --keys {keys}`"
        )
    return Custodian(keys, connect(url_for_home(home)))


def _read_numbers(path: Path) -> list[str]:
    """The file's NHS numbers, checked. Entry N is line N, so a refusal names line numbers."""
    from gpdpr.custodian.central import normalise_nhs_numbers
    from gpdpr.errors import UserError

    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file of NHS numbers, one per line") from None
    try:
        return normalise_nhs_numbers(lines)
    except UserError as exc:
        raise UserError(f"{path}: {str(exc).replace('entries', 'lines')}") from None


@reid_app.command("request")
def reid_request(
    project: Annotated[str, typer.Option(help="The approved project the pseudonyms are for.")],
    legal_basis: Annotated[
        str,
        typer.Option(
            help="consent, court_order_or_legal_requirement, overriding_public_interest or "
            "s251_support."
        ),
    ],
    purpose: Annotated[str, typer.Option(help="Why, in plain words (published).")],
    nhs_numbers: Numbers,
    requested_by: Annotated[str, typer.Option(help="Who asks (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Ask for the project pseudonyms of named people; two others must approve."""
    from gpdpr.errors import UserError

    try:
        numbers = _read_numbers(nhs_numbers)
        request_id = open_custodian(home).request_reidentification(
            project, legal_basis, purpose, numbers, requested_by
        )
    except UserError as exc:
        fail(str(exc))
    console.print(
        f"re-identification request [bold]{request_id}[/] recorded: it needs two approvers "
        "other than you"
    )


@reid_app.command("approve")
def reid_approve(
    request_id: RequestId,
    approver: Annotated[str, typer.Option(help="Who approves (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Approve a request (two distinct approvers, neither the requester)."""
    from gpdpr.errors import UserError

    try:
        status = open_custodian(home).approve(request_id, approver)
    except UserError as exc:
        fail(str(exc))
    console.print(f"request {request_id}: approval recorded; it is now [bold]{status}[/]")


@reid_app.command("refuse")
def reid_refuse(
    request_id: RequestId,
    by: Annotated[str, typer.Option(help="Who refuses (published).")],
    reason: Annotated[str, typer.Option(help="Why (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Refuse a request; it can then never be fulfilled."""
    from gpdpr.errors import UserError

    try:
        open_custodian(home).refuse(request_id, by, reason)
    except UserError as exc:
        fail(str(exc))
    console.print(f"request {request_id} [bold]refused[/]")


@reid_app.command("fulfil")
def reid_fulfil(
    request_id: RequestId,
    nhs_numbers: Numbers,
    out: Annotated[Path, typer.Option(help="CSV to write (never overwritten; owner-only).")],
    actor: Annotated[str, typer.Option(help="Who carries it out (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Carry out an approved request: write each NHS number's project pseudonym to a CSV."""
    from gpdpr.errors import UserError

    try:
        numbers = _read_numbers(nhs_numbers)
        custodian = open_custodian(home)
        # The file is claimed before the request is marked fulfilled, so the result always
        # has somewhere to go; it is removed again if the request is refused.
        with _private_file(out) as f:
            mapping = custodian.fulfil(request_id, numbers, actor)
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["nhs_number", "project_pseudonym"])
            writer.writerows(mapping.items())
    except UserError as exc:
        fail(str(exc))
    console.print(f"request {request_id} fulfilled: {len(mapping)} project pseudonyms in {out}")


@contextmanager
def _private_file(path: Path) -> Iterator[TextIO]:
    """A new file only its owner can read, removed if the block fails."""
    from gpdpr.errors import UserError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists; choose a new file for the result") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
    except BaseException:
        path.unlink(missing_ok=True)
        raise
