"""`gpdpr governance`: who may use which data, for what, decided in the open.

Organisations and people are registered; an applicant writes an application as a TOML file
(`gpdpr governance example` prints one), saves it as a draft and submits it through the
automatic checks; the administrator starts the panel's review; members free of conflict vote;
the administrator records the decision with its minutes, and issues (or revokes) the data
sharing agreement; `agreement check` asks the one gate the research environment passes through;
`register` writes the public Data Uses Register.

Every command is one transaction: a refusal (exit code 2, one line on stderr) leaves the record
exactly as it was. Each first brings agreements past their end date up to date (access already
stopped at the end date; the recorded status catches up).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpdpr.governance.vocabulary import (
    DEFAULT_QUORUM,
    LEGAL_BASES,
    ORGANISATION_KINDS,
    PURPOSES,
    ROLES,
    STATES,
)
from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gpdpr.governance.form import ApplicationForm
    from gpdpr.governance.models import Agreement, Application

governance_app = typer.Typer(
    rich_markup_mode=None,
    help="Governance: applications for data, the independent panel, data sharing agreements "
    "and the public register.",
    no_args_is_help=True,
)
org_app = typer.Typer(
    rich_markup_mode=None,
    help="Organisations that apply, collaborate or fund.",
    no_args_is_help=True,
)
person_app = typer.Typer(
    rich_markup_mode=None, help="People who take part, with their roles.", no_args_is_help=True
)
review_app = typer.Typer(
    rich_markup_mode=None,
    help="The independent review panel: start, conflicts, votes, decision.",
    no_args_is_help=True,
)
agreement_app = typer.Typer(
    rich_markup_mode=None,
    help="Data sharing agreements: issue, revoke, and check access.",
    no_args_is_help=True,
)
governance_app.add_typer(org_app, name="org")
governance_app.add_typer(person_app, name="person")
governance_app.add_typer(review_app, name="review")
governance_app.add_typer(agreement_app, name="agreement")

Actor = Annotated[
    str, typer.Option("--as", metavar="HANDLE", help="Your handle: the person doing this.")
]
Reference = Annotated[str, typer.Argument(help="The application's reference, e.g. APP-2026-0001.")]
AgreementRef = Annotated[str, typer.Argument(help="The agreement's reference, e.g. DSA-2026-0001.")]
FormFile = Annotated[
    Path, typer.Argument(help="The application as a TOML file (see gpdpr governance example).")
]
CMD = "gpdpr governance"


def _say(*lines: str) -> None:
    """Print plain lines (nothing in them is read as Rich markup)."""

    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


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
        fail(str(exc))


def _read(file: Path) -> ApplicationForm:
    """The application in `file`, read and checked for shape before the database is opened,
    so a file that cannot be saved leaves nothing behind, and its errors name the file."""
    from gpdpr.errors import UserError
    from gpdpr.governance.form_file import read_form
    from gpdpr.spec import shipped

    form = None
    try:
        form = read_form(file)
        form.check_shape(shipped())
    except UserError as exc:
        fail(f"{file}: {exc}" if form is not None else str(exc))
    return form


def _day(option: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"{option} must be a date like 2026-10-31 (got {text!r})")


# Organisations and people


@org_app.command("add")
def org_add(
    name: Annotated[str, typer.Argument(help="The organisation's name, as applications name it.")],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(ORGANISATION_KINDS)}.")],
    actor: Actor,
    home: Home = DEFAULT_HOME,
) -> None:
    """Add an organisation (an administrator does)."""
    from gpdpr.governance.people import add_organisation

    with _session(home) as session:
        org = add_organisation(session, actor, name, kind)
        added, kind = org.name, ORGANISATION_KINDS[org.kind]
    _say(
        f"organisation {added!r} added ({kind}).",
        f"People join it with: {CMD} person add HANDLE --org {added!r} ...",
    )


@governance_app.command("orgs")
def orgs(home: Home = DEFAULT_HOME) -> None:
    """List the organisations."""
    from rich.table import Table

    from gpdpr.governance.people import organisations

    table = Table("organisation", "kind", "added")
    with _session(home) as session:
        for org in organisations(session):
            table.add_row(
                _plain(org.name), ORGANISATION_KINDS[org.kind], f"{org.created_at:%Y-%m-%d}"
            )
    if table.row_count:
        console.print(table)
    else:
        _say(f"No organisations yet: add one with {CMD} org add NAME --kind KIND")


@person_app.command("add")
def person_add(
    handle: Annotated[str, typer.Argument(help="How they are named in commands, e.g. a.khan.")],
    name: Annotated[str, typer.Option(help="Their full name.")],
    email: Annotated[str, typer.Option(help="Their contact email (never published).")],
    role: Annotated[
        list[str],
        typer.Option("--role", metavar="ROLE", help=f"Repeat for each: {', '.join(ROLES)}."),
    ],
    org: Annotated[
        str | None, typer.Option(help="Their organisation (an applicant needs one).")
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Your handle: an administrator adds people. Leave it out only to add the "
            "service's first administrator.",
        ),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Add someone who takes part, with their roles (an administrator does)."""
    from gpdpr.governance.people import add_person

    with _session(home) as session:
        person = add_person(session, actor, handle, name, email, org, role)
        at = f" of {person.organisation.name}" if person.organisation else ""
        done = f"{person.handle} ({person.name}{at}) added as {', '.join(sorted(person.roles))}."
    _say(done, f"They act with --as {handle}.")


@governance_app.command("people")
def people(home: Home = DEFAULT_HOME) -> None:
    """List the people who take part, with their roles."""
    from rich.table import Table

    from gpdpr.governance.people import people as everyone

    table = Table("handle", "name", "organisation", "roles", "email")
    with _session(home) as session:
        for p in everyone(session):
            org = p.organisation.name if p.organisation else ""
            roles = ", ".join(sorted(p.roles))
            table.add_row(*map(_plain, (p.handle, p.name, org, roles, p.email)))
    if table.row_count:
        console.print(table)
    else:
        _say(f"No one yet: add people with {CMD} person add HANDLE --name ... --role ...")


# Applications


@governance_app.command("example")
def example() -> None:
    """Print an example application (TOML, fully commented) to start yours from."""
    from gpdpr.governance.form_file import EXAMPLE

    sys.stdout.write(EXAMPLE)


@governance_app.command("apply")
def apply(file: FormFile, actor: Actor, home: Home = DEFAULT_HOME) -> None:
    """Save an application as a draft, led by you for your organisation."""
    from gpdpr.governance.applications import create_draft

    form = _read(file)
    with _session(home) as session:
        app = create_draft(session, actor, form)
        ref = app.reference
    _say(
        f"draft {ref} saved: {form.title!r}, led by {actor}.",
        f"Read it with {CMD} show {ref}; change it with {CMD} edit {ref} FILE --as {actor}; "
        f"submit it with {CMD} submit {ref} --as {actor}",
    )


@governance_app.command("edit")
def edit(reference: Reference, file: FormFile, actor: Actor, home: Home = DEFAULT_HOME) -> None:
    """Replace a draft's content with the application in FILE."""
    from gpdpr.governance.applications import edit_draft

    form = _read(file)
    with _session(home) as session:
        edit_draft(session, actor, reference, form)
    _say(
        f"draft {reference} updated from {file}.",
        f"Submit it with {CMD} submit {reference} --as {actor}",
    )


@governance_app.command("submit")
def submit(reference: Reference, actor: Actor, home: Home = DEFAULT_HOME) -> None:
    """Submit your draft through the automatic checks.

    Refused at once for an excluded purpose; otherwise on to the panel, with anything it should
    look at closely flagged."""
    from gpdpr.governance.applications import submit as submit_draft

    with _session(home) as session:
        app = submit_draft(session, actor, reference)
        state, reason, flags = app.state, app.outcome_reason, list(app.flags)
    if state == "refused":
        _say(
            f"{reference} refused by the automatic checks: {reason}",
            "The refusal is on the public register. A new application is needed for another "
            "purpose.",
        )
        return
    lines = [f"{reference} submitted: it awaits review by the independent panel."]
    if flags:
        lines.append("Flagged for the panel's attention:")
        lines += [f"  - {flag}" for flag in flags]
    else:
        lines.append("Nothing was flagged for the panel's attention.")
    lines.append(
        f"An administrator starts the review with {CMD} review start {reference} --as HANDLE"
    )
    _say(*lines)


@governance_app.command("withdraw")
def withdraw(
    reference: Reference,
    actor: Actor,
    reason: Annotated[str, typer.Option(help="Why (published unless it was still a draft).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Withdraw your application (a draft, or one awaiting or under review)."""
    from gpdpr.governance.applications import withdraw as withdraw_app

    with _session(home) as session:
        withdraw_app(session, actor, reference, reason)
    _say(f"{reference} withdrawn. A new application starts with {CMD} apply FILE --as {actor}")


@governance_app.command("applications")
def applications(
    state: Annotated[
        str | None, typer.Option(help=f"Only those in this state: {', '.join(STATES)}.")
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """List the applications."""
    from rich.table import Table

    from gpdpr.governance.applications import applications as listed

    if state is not None and state not in STATES:
        fail(f"--state must be one of {', '.join(STATES)} (got {state!r})")
    table = Table("reference", "title", "state", "lead applicant", "organisations", "submitted")
    with _session(home) as session:
        for app in listed(session, state):
            table.add_row(
                *map(
                    _plain,
                    (
                        app.reference,
                        app.title,
                        app.state.replace("_", " "),
                        app.lead_applicant.handle,
                        ", ".join(o.organisation.name for o in app.organisations),
                        f"{app.submitted_at:%Y-%m-%d}" if app.submitted_at else "",
                    ),
                )
            )
    if table.row_count:
        console.print(table)
    else:
        _say("No applications" + (f" {state.replace('_', ' ')}." if state else " yet."))


@governance_app.command("show")
def show(reference: Reference, home: Home = DEFAULT_HOME) -> None:
    """Everything about one application.

    Its content, the panel's review, the decision with its minutes, and the agreement."""
    from gpdpr.governance.applications import application

    with _session(home) as session:
        _render(session, application(session, reference))


# The panel


@review_app.command("start")
def review_start(reference: Reference, actor: Actor, home: Home = DEFAULT_HOME) -> None:
    """Put a submitted application before the panel (administrator)."""
    from gpdpr.governance.panel import start_review

    with _session(home) as session:
        app = start_review(session, actor, reference)
        flags = list(app.flags)
    _say(
        f"{reference} is under review by the panel"
        + (
            f", with {len(flags)} flag(s) to look at (see {CMD} show {reference})."
            if flags
            else "."
        ),
        f"Members vote with {CMD} review vote {reference} approve|refuse --as HANDLE, or declare "
        f"a conflict with {CMD} review conflict {reference} --as HANDLE --reason ...",
    )


@review_app.command("conflict")
def review_conflict(
    reference: Reference,
    actor: Actor,
    reason: Annotated[str, typer.Option(help="What the conflict of interest is (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Declare your conflict of interest on an application (panel member).

    You will not vote on it, and a vote you already cast is struck out."""
    from gpdpr.governance.panel import declare_conflict

    with _session(home) as session:
        had_voted = declare_conflict(session, actor, reference, reason)
    struck = " Your earlier vote was struck out: it does not count." if had_voted else ""
    _say(f"conflict of interest recorded: {actor} will not vote on {reference}.{struck}")


@review_app.command("vote")
def review_vote(
    reference: Reference,
    choice: Annotated[str, typer.Argument(help="approve or refuse.", metavar="approve|refuse")],
    actor: Actor,
    comment: Annotated[str, typer.Option(help="Your reasons, for the minutes.")] = "",
    home: Home = DEFAULT_HOME,
) -> None:
    """Cast your vote on an application under review (panel member, once, free of conflict)."""
    from gpdpr.governance.applications import application
    from gpdpr.governance.panel import counted_votes, vote

    with _session(home) as session:
        vote(session, actor, reference, choice, comment)
        session.flush()
        counted = len(counted_votes(session, application(session, reference)))
    _say(
        f"{actor} voted to {choice} {reference}: {counted} counted vote(s) so far.",
        f"Once a quorum has voted, an administrator records the decision with {CMD} review "
        f"decide {reference} --as HANDLE --minutes ...",
    )


@review_app.command("decide")
def review_decide(
    reference: Reference,
    actor: Actor,
    minutes: Annotated[
        str | None, typer.Option(help="The panel's minutes (published with the decision).")
    ] = None,
    minutes_file: Annotated[
        Path | None, typer.Option(help="A text file holding the minutes, instead of --minutes.")
    ] = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition", metavar="TEXT", help="A condition of approval; repeat for each."
        ),
    ] = None,
    quorum: Annotated[
        int,
        typer.Option(envvar="GPDPR_PANEL_QUORUM", help="Counted votes needed for a decision."),
    ] = DEFAULT_QUORUM,
    home: Home = DEFAULT_HOME,
) -> None:
    """Record the panel's decision (administrator).

    The outcome is what the counted votes say, once a quorum has voted; the minutes and any
    conditions are published with it."""
    from gpdpr.governance.panel import decide

    if (minutes is None) == (minutes_file is None):
        fail("give the minutes with --minutes TEXT or --minutes-file FILE (one of them)")
    if minutes_file is not None:
        try:
            minutes = minutes_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            fail(f"cannot read the minutes from {minutes_file}: {why}")
    assert minutes is not None
    with _session(home) as session:
        decision = decide(session, actor, reference, minutes, condition or [], quorum)
        outcome, conditions = decision.outcome, list(decision.conditions)
        tally = f"{decision.votes_for} for, {decision.votes_against} against, quorum {quorum}"
    if outcome == "approved":
        lines = [f"{reference} approved by the panel ({tally})."]
        lines += [f"  condition: {c}" for c in conditions]
        lines.append(f"Issue its agreement with {CMD} agreement issue {reference} --as {actor}")
    else:
        lines = [
            f"{reference} refused by the panel ({tally}).",
            "The decision and its minutes are published on the register.",
        ]
    _say(*lines)


# Agreements


@agreement_app.command("issue")
def agreement_issue(
    reference: Reference,
    actor: Actor,
    start: Annotated[str | None, typer.Option(help="First day of access (default today).")] = None,
    end: Annotated[
        str | None,
        typer.Option(help="First day without access (default: the duration approved)."),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Issue the data sharing agreement for an approved application (administrator).

    It grants exactly the data the panel approved, for at most the duration asked for."""
    from gpdpr.governance.agreements import issue

    starts_on, ends_on = _day("--start", start), _day("--end", end)
    with _session(home) as session:
        made = issue(session, actor, reference, starts_on, ends_on)
        ref, begins, ends = made.reference, made.starts_on, made.ends_on
    _say(
        f"agreement {ref} issued for {reference}: access from {begins} until {ends} "
        "(it stops at the start of that day).",
        f"Team members' access is checked with {CMD} agreement check {ref} --as HANDLE "
        "--item TABLE.FIELD",
    )


@agreement_app.command("revoke")
def agreement_revoke(
    reference: AgreementRef,
    actor: Actor,
    reason: Annotated[str, typer.Option(help="Why it is revoked (published).")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Revoke an agreement now (administrator): access stops at once."""
    from gpdpr.governance.agreements import revoke

    with _session(home) as session:
        revoke(session, actor, reference, reason)
    _say(f"agreement {reference} revoked: no one has access under it from now on.")


@agreement_app.command("check")
def agreement_check(
    reference: AgreementRef,
    actor: Annotated[
        str, typer.Option("--as", metavar="HANDLE", help="The handle of the person wanting access.")
    ],
    item: Annotated[
        list[str] | None,
        typer.Option("--item", metavar="TABLE.FIELD", help="TABLE.FIELD wanted; repeat for each."),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """May this person use these fields under this agreement now?

    Prints what they may use, or fails (exit code 2) saying why not: the research environment
    asks the same question."""
    from gpdpr.governance.agreements import authorise

    wanted: dict[str, list[str]] = {}
    for entry in item or []:
        table, dot, field = entry.partition(".")
        if not (dot and table and field):
            fail(f"--item {entry!r} should be TABLE.FIELD, like patients.sex")
        wanted.setdefault(table, []).append(field)
    with _session(home) as session:
        scope = authorise(session, actor, reference, wanted)
    people_covered = _population(scope.population)
    opt_out = "applied" if scope.national_data_opt_out_applied else "not applied (exemption)"
    _say(
        f"allowed: {actor} may use under {scope.agreement} (application {scope.application}), "
        f"until {scope.ends_on}:",
        *(f"  {table}: {', '.join(fields)}" for table, fields in scope.tables.items()),
        f"records from {scope.data_from} to {scope.data_to}; people: {people_covered}; "
        f"National Data Opt-out {opt_out}",
    )


# The register


@governance_app.command("register")
def register(
    out: Annotated[
        Path | None, typer.Option(help="Folder to write it in (default HOME/register).")
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Write the public Data Uses Register from the record.

    Every agreement, with its decision and releases, and every refusal: as JSON, CSV and
    HTML."""
    from gpdpr.governance.register import write

    folder = out or home / "register"
    with _session(home) as session:
        try:
            written = write(session, folder)
        except OSError as exc:
            fail(f"cannot write the register in {folder}: {exc.strerror}")
    _say(f"Data Uses Register written in {folder}:")
    _say(*(f"  {kind}: {path}" for kind, path in written.items()))


# Showing one application


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _population(population: dict[str, object]) -> str:
    parts = []
    low, high = population.get("min_age"), population.get("max_age")
    if low is not None or high is not None:
        parts.append(
            f"aged {low if low is not None else 0} to {high if high is not None else 'any'}"
        )
    for key, word in (("sexes", "sex"), ("regions", "regions")):
        values = population.get(key)
        if isinstance(values, list) and values:
            parts.append(f"{word} {', '.join(map(str, values))}")
    return "; ".join(parts) or "everyone"


def _render(session: Session, app: Application) -> None:
    import sqlalchemy as sa
    from rich.table import Table

    from gpdpr.governance.models import Agreement, Conflict, Decision, Person, Vote
    from gpdpr.governance.panel import conflicts_of
    from gpdpr.governance.vocabulary import EXCLUDED_PURPOSES, NDOO_EXEMPTIONS

    def field(label: str, value: object) -> None:
        console.print(f"[bold]{label}:[/] {_plain(str(value))}", highlight=False, soft_wrap=True)

    def heading(text: str) -> None:
        console.print(f"\n[bold underline]{text}[/]")

    lead = app.lead_applicant
    console.print(f"[bold]{_plain(app.reference)}[/]: {_plain(app.title)}", highlight=False)
    field("state", STATES[app.state])
    if app.outcome_reason:
        field("why", app.outcome_reason)
    org = lead.organisation.name if lead.organisation else ""
    field("lead applicant", f"{lead.name} ({lead.handle}), {org}")
    purpose = PURPOSES.get(app.purpose_category) or EXCLUDED_PURPOSES.get(app.purpose_category, "")
    field("purpose", f"{app.purpose_category}: {purpose}")
    field(
        "legal basis",
        LEGAL_BASES.get(app.legal_basis, "not given") if app.legal_basis else "not given",
    )
    field("records", f"from {app.data_from or '?'} to {app.data_to or '?'}")
    field("people covered", _population(app.population))
    if app.ndoo_exemption:
        exemption = NDOO_EXEMPTIONS[app.ndoo_exemption]
        field("National Data Opt-out", f"not applied: {exemption} ({app.ndoo_exemption_reason})")
    else:
        field("National Data Opt-out", "applied")
    field("duration", f"{app.duration_months} months")
    field("commercial", f"yes: {app.commercial_benefit}" if app.commercial else "no")
    field("for marketing", "yes" if app.uses_for_marketing else "no")
    field("for insurance", "yes" if app.uses_for_insurance else "no")
    field("created", f"{app.created_at:%Y-%m-%d %H:%M UTC}")
    if app.submitted_at:
        field("submitted", f"{app.submitted_at:%Y-%m-%d %H:%M UTC}")
    for label, text in (
        ("Lay summary", app.lay_summary),
        ("Technical summary", app.technical_summary),
        ("Expected benefit", app.expected_benefit),
    ):
        heading(label)
        console.print(_plain(text or "(not given)"), highlight=False)

    heading("Organisations")
    table = Table("organisation", "kind", "role")
    for o in app.organisations:
        table.add_row(_plain(o.organisation.name), ORGANISATION_KINDS[o.organisation.kind], o.role)
    console.print(table)

    heading("Team (only they may use the data)")
    table = Table("handle", "name", "organisation")
    for p in (m.person for m in app.team):
        table.add_row(
            *map(_plain, (p.handle, p.name, p.organisation.name if p.organisation else ""))
        )
    console.print(table)

    heading("Data items")
    table = Table("item", "justification")
    for i in app.items:
        table.add_row(_plain(f"{i.table_name}.{i.field_name}"), _plain(i.justification or "(none)"))
    console.print(table if app.items else "none asked for yet")

    heading("Flags for the panel")
    for flag in app.flags:
        console.print(f"- {_plain(flag)}", highlight=False)
    if not app.flags:
        console.print("none" if app.submitted_at else "none yet (set on submission)")

    conflicts = list(session.scalars(sa.select(Conflict).where(Conflict.application_id == app.id)))
    heading("Conflicts of interest declared")
    for c in conflicts:
        console.print(f"- {_plain(c.person.handle)}: {_plain(c.reason)} ({c.declared_at:%Y-%m-%d})")
    if not conflicts:
        console.print("none")

    votes = list(
        session.scalars(sa.select(Vote).where(Vote.application_id == app.id).order_by(Vote.cast_at))
    )
    heading("Votes")
    if votes:
        table = Table("member", "vote", "counts", "comment", "cast")
        for v in votes:
            reasons = conflicts_of(session, v.person, app)
            counts = f"no: {'; '.join(reasons)}" if reasons else "yes"
            table.add_row(
                *map(_plain, (v.person.handle, v.vote, counts, v.comment, f"{v.cast_at:%Y-%m-%d}"))
            )
        console.print(table)
    else:
        console.print("none")

    decision = session.get(Decision, app.id)
    heading("Decision")
    if decision is None:
        console.print("not yet decided")
    else:
        recorder = session.get(Person, decision.recorded_by_id)
        field(
            "outcome",
            f"{decision.outcome} on {decision.decided_at:%Y-%m-%d} ({decision.votes_for} for, "
            f"{decision.votes_against} against, quorum {decision.quorum}), recorded by "
            f"{recorder.handle if recorder else '?'}",
        )
        field("minutes", decision.minutes)
        for condition in decision.conditions:
            field("condition", condition)

    made = session.scalar(sa.select(Agreement).where(Agreement.application_id == app.id))
    heading("Agreement")
    if made is None:
        console.print("none")
    else:
        _render_agreement(made)


def _render_agreement(made: Agreement) -> None:

    def field(label: str, value: object) -> None:
        console.print(f"[bold]{label}:[/] {_plain(str(value))}", highlight=False, soft_wrap=True)

    field("reference", made.reference)
    field("status", made.status)
    field("access", f"from {made.starts_on} until {made.ends_on} (the first day without access)")
    if made.revoked_at is not None:
        field("revoked", f"{made.revoked_at:%Y-%m-%d %H:%M UTC}: {made.revoked_reason}")
    for table, fields in made.scope["tables"].items():
        field(f"  {table}", ", ".join(fields))
    field("records", f"from {made.scope['data_from']} to {made.scope['data_to']}")
    field("National Data Opt-out", made.scope["national_data_opt_out"])
    for c in made.conditions:
        field("condition", c)
    field("releases", len(made.releases))
