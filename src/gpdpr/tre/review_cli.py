"""Output checking from the command line: the release requests waiting, one request in full, and
an output checker's approve, reject or return, file by file.

Two checkers, neither the author nor on the project's team nor from the author's organisation,
approve every file of a request; then it is released: its files are copied to the register's
folder (HOME/register/releases/<release>/, beside definition.json, the definition that made them)
from the run's outputs (HOME/tre/runs/<RUN>/outputs), and the register is written again.

Every command is one transaction: a refusal (exit code 2, one line on stderr) leaves the record
exactly as it was. Mounted by the research environment's CLI (`gpdpr tre`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

review_app = typer.Typer(
    rich_markup_mode=None,
    help="Output checking: release requests, and two independent checkers' reviews.",
    no_args_is_help=True,
)

Actor = Annotated[
    str, typer.Option("--as", metavar="HANDLE", help="Your handle: the output checker doing this.")
]
RequestRef = Annotated[str, typer.Argument(help="The release request, e.g. REQ-000001.")]
FileName = Annotated[str, typer.Argument(help="One file of the request, e.g. table.csv.")]
Comment = Annotated[
    str, typer.Option(help="Why: the author reads it to know what to change (required).")
]
CMD = "gpdpr tre"


def outputs_folder(home: Path, run_reference: str) -> Path:
    """Where a run's output files wait inside the environment."""
    from gpdpr.tre.runs import OUTPUTS, run_folder

    return run_folder(home, run_reference) / OUTPUTS


def register_folder(home: Path) -> Path:
    return home / "register"


def _say(*lines: str) -> None:
    """Print plain lines (nothing in them is read as Rich markup)."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _plain(text: object) -> str:
    from rich.markup import escape

    return escape(str(text))


@contextmanager
def _session(home: Path) -> Iterator[Session]:
    """One transaction on the central database: committed if the body finishes, rolled back
    (and the refusal printed, exit code 2) if it raises a UserError."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from gpdpr.db import connect, url_for_home
    from gpdpr.errors import UserError
    from gpdpr.governance.agreements import expire_due

    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot make the home folder {home}: {exc.strerror}")
    try:
        engine = connect(url_for_home(home))
        try:
            # Its own transaction: the catching up stands even if the command is refused.
            with Session(engine) as session, session.begin():
                expire_due(session)
            with Session(engine) as session, session.begin():
                yield session
        finally:
            engine.dispose()
    except IntegrityError:
        fail("the record changed while this was being done (someone else acted): look again")
    except UserError as exc:
        fail(" ".join(str(exc).split("\n")))


@review_app.command("requests")
def requests(
    awaiting: Annotated[
        bool, typer.Option("--awaiting", help="Only the files you may still review (with --as).")
    ] = False,
    actor: Annotated[
        str | None,
        typer.Option("--as", metavar="HANDLE", help="Your handle, as an output checker."),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """List the release requests, or with --awaiting --as HANDLE the files waiting for you."""
    from rich.table import Table

    from gpdpr.tre.release.checking import STATE_WORDS, release_requests, requests_awaiting

    if awaiting and actor is None:
        fail("--awaiting lists the files waiting for one checker: say who with --as HANDLE")
    if awaiting:
        assert actor is not None
        table = Table("request", "file", "bytes", "sha256", "title", "requested by", "approvals")
        with _session(home) as session:
            for request, file in requests_awaiting(session, actor):
                approvals = len({r.checker_id for r in file.reviews if r.decision == "approve"})
                table.add_row(
                    *map(
                        _plain,
                        (
                            request.reference,
                            file.name,
                            file.bytes,
                            file.sha256[:12],
                            request.title,
                            request.requested_by.handle,
                            f"{approvals} of 2",
                        ),
                    )
                )
        if table.row_count:
            console.print(table)
        else:
            _say(f"Nothing is waiting for {actor} to review.")
        return
    table = Table("request", "title", "state", "run", "project", "files", "requested by", "made")
    with _session(home) as session:
        for request in release_requests(session):
            table.add_row(
                *map(
                    _plain,
                    (
                        request.reference,
                        request.title,
                        STATE_WORDS[request.state],
                        request.run.reference,
                        request.run.agreement.application.reference,
                        ", ".join(f.name for f in request.files),
                        request.requested_by.handle,
                        f"{request.created_at:%Y-%m-%d}",
                    ),
                )
            )
    if table.row_count:
        console.print(table)
    else:
        _say("No release requests yet.")


@review_app.command("show")
def show(reference: RequestRef, home: Home = DEFAULT_HOME) -> None:
    """Everything about one release request: its run, its files (with how many of their cells
    disclosure control published, rounded, redacted or suppressed) and every review."""
    from gpdpr.tre.release.checking import show_request

    with _session(home) as session:
        shown = show_request(session, reference, home)
    _render(shown)


def _render(shown: dict[str, Any]) -> None:
    from rich.table import Table

    from gpdpr.tre.release.checking import STATE_WORDS

    def field(label: str, value: object) -> None:
        console.print(f"[bold]{label}:[/] {_plain(value)}", highlight=False, soft_wrap=True)

    run = shown["run"]
    console.print(f"[bold]{_plain(shown['request'])}[/]: {_plain(shown['title'])}", highlight=False)
    field("state", STATE_WORDS[shown["state"]])
    org = f", {shown['organisation']}" if shown["organisation"] else ""
    field(
        "requested by", f"{shown['requested_by']}{org}, on {shown['created_at']:%Y-%m-%d %H:%M UTC}"
    )
    if shown["decided_at"] is not None:
        field("decided", f"{shown['decided_at']:%Y-%m-%d %H:%M UTC}")
    if shown["release"] is not None:
        field("release", shown["release"])
    field("project", f"{shown['project']} under {shown['agreement']}")
    how = f"{run['engine']}, lake version {run['lake_version']}"
    field("run", f"{run['reference']} by {run['by']} ({how}, rule {run['disclosure_rule']})")
    field("definition SHA-256", run["definition_sha256"])
    if shown["description"]:
        field("description", shown["description"])
    table = Table("file", "rows", "bytes", "sha256", "approvals")
    for f in shown["files"]:
        rows = "" if f["rows"] is None else f["rows"]
        table.add_row(
            *map(_plain, (f["name"], rows, f["bytes"], f["sha256"], f"{f['approvals']} of 2"))
        )
    console.print(table)
    _render_statuses(shown["files"])
    reviews = [(f["name"], r) for f in shown["files"] for r in f["reviews"]]
    if reviews:
        table = Table("file", "checker", "decision", "comment", "at")
        for name, r in reviews:
            table.add_row(
                *map(
                    _plain, (name, r["checker"], r["decision"], r["comment"], f"{r['at']:%Y-%m-%d}")
                )
            )
        console.print(table)
    else:
        _say("No reviews yet.")


def _render_statuses(files: list[dict[str, Any]]) -> None:
    """Per file, how many cells have each status (what the checkers' page shows cell by cell)."""
    from rich.table import Table

    from gpdpr.tre.release.checking import CELL_STATUSES

    table = Table("file", *(f"{status} cells" for status in CELL_STATUSES))
    for f in files:
        if f["statuses"] is None:
            table.add_row(_plain(f["name"]), *(["not kept"] * len(CELL_STATUSES)))
        else:
            table.add_row(_plain(f["name"]), *(str(f["statuses"][s]) for s in CELL_STATUSES))
    console.print(table)
    reasons = sorted({(c.status, c.reason) for f in files for c in f["cells"] or [] if c.reason})
    for status, reason in reasons:
        _say(f"{status}: {reason}")


def _review(home: Path, reference: str, file: str, actor: str, decision: str, comment: str) -> None:
    """Record one review; publish and rewrite the register if it released the request."""
    from gpdpr.governance.register import write
    from gpdpr.tre.release.checking import publish_files, review

    released: tuple[int, Path] | None = None
    with _session(home) as session:
        request = review(session, actor, reference, file, decision, comment)
        state = request.state
        waiting = [
            f.name
            for f in request.files
            if len({r.checker_id for r in f.reviews if r.decision == "approve"}) < 2
        ]
        if state == "released":
            assert request.release is not None
            # Before the commit: a file that changed since it was requested refuses the release.
            folder = publish_files(
                request.release,
                outputs_folder(home, request.run.reference),
                register_folder(home),
            )
            released = (request.release.id, folder)
    if released is not None:
        release_id, folder = released
        with _session(home) as session:
            try:
                write(session, register_folder(home))
            except OSError as exc:
                fail(
                    f"{reference} is released (release {release_id}, files in {folder}), but the "
                    f"register could not be written: {exc.strerror}; write it with "
                    "gpdpr governance register"
                )
        _say(
            f"{reference} released as release {release_id}: its files and definition.json are "
            f"published in {folder}, and the register in {register_folder(home)} is updated."
        )
    elif state == "awaiting_review":
        _say(
            f"{actor} approved {file} of {reference}.",
            f"Still waiting for approvals: {', '.join(waiting)} (each file needs two checkers).",
        )
    elif state == "rejected":
        _say(f"{reference} rejected by {actor} ({file}): nothing from it will be released.")
    else:
        _say(
            f"{reference} returned to its author by {actor} ({file}), with your comment; they "
            "can change the definition and ask again from a new run."
        )


@review_app.command("approve")
def approve(
    reference: RequestRef,
    file: FileName,
    actor: Actor,
    comment: Annotated[str, typer.Option(help="Anything the author should know.")] = "",
    home: Home = DEFAULT_HOME,
) -> None:
    """Approve one file of a request (output checker). Two approvals on every file release it."""
    _review(home, reference, file, actor, "approve", comment)


@review_app.command("reject")
def reject(
    reference: RequestRef, file: FileName, actor: Actor, comment: Comment, home: Home = DEFAULT_HOME
) -> None:
    """Reject a request because of one of its files (output checker): final, nothing leaves."""
    _review(home, reference, file, actor, "reject", comment)


@review_app.command("return")
def return_(
    reference: RequestRef, file: FileName, actor: Actor, comment: Comment, home: Home = DEFAULT_HOME
) -> None:
    """Return a request to its author with comments (output checker): they fix it and ask again
    from a new run."""
    _review(home, reference, file, actor, "return", comment)
