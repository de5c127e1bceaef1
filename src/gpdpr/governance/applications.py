"""Applications: written as drafts, submitted through the automatic checks, withdrawn, and moved
from state to state only along `TRANSITIONS`.

Every function here takes the caller's session and raises before writing anything it refuses,
so a refused request leaves the record as it was (the caller's transaction rolls back as well).
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.checks import screen
from gpdpr.governance.form import (
    SCALAR_FIELDS,
    ApplicationForm,
    Item,
    Population,
    check_items,
)
from gpdpr.governance.models import (
    Application,
    ApplicationOrganisation,
    DataItem,
    Person,
    TeamMember,
)
from gpdpr.governance.people import acting, organisation, person
from gpdpr.governance.vocabulary import ACTION_WORDS, STATES, TRANSITIONS
from gpdpr.spec import Specification, shipped


def application(session: Session, reference: str) -> Application:
    found = session.scalar(sa.select(Application).where(Application.reference == reference))
    if found is None:
        raise UserError(f"no application {reference!r}: see gpdpr governance applications")
    return found


def applications(session: Session, state: str | None = None) -> list[Application]:
    query = sa.select(Application).order_by(Application.id)
    if state is not None:
        query = query.where(Application.state == state)
    return list(session.scalars(query))


def advance(session: Session, app: Application, action: str, to: str | None = None) -> str:
    """Move `app` by `action` if TRANSITIONS allows it from its state, else refuse, naming the
    states the action is possible from. The change is conditional on the state read, so two
    people acting at once cannot both move it."""
    allowed = TRANSITIONS.get((action, app.state))
    if allowed is None:
        raise NotAllowed(refusal(app, action))
    target = to or allowed
    moved = session.execute(
        sa.update(Application)
        .where(Application.id == app.id, Application.state == app.state)
        .values(state=target, updated_at=now()),
        execution_options={"synchronize_session": "fetch"},
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise NotAllowed(f"{app.reference} changed while this was being done: look again")
    return target


def refusal(app: Application, action: str) -> str:
    possible = [state.replace("_", " ") for a, state in TRANSITIONS if a == action]
    return (
        f"cannot {ACTION_WORDS[action]} {app.reference}: it is {app.state.replace('_', ' ')} "
        f"({STATES[app.state]}), and that is possible only while it is {' or '.join(possible)}"
    )


def create_draft(
    session: Session, handle: str, form: ApplicationForm, spec: Specification | None = None
) -> Application:
    """A new draft, led by `handle` for their organisation."""
    lead = acting(session, handle, "applicant", "make an application")
    form.check_shape(spec or shipped())
    stamp = now()
    app = Application(
        reference=f"pending-{uuid.uuid4().hex[:20]}",  # until the id is known
        state="draft",
        lead_applicant=lead,
        flags=[],
        outcome_reason="",
        created_at=stamp,
        updated_at=stamp,
        submitted_at=None,
    )
    _fill(session, app, lead, form)
    session.add(app)
    session.flush()
    app.reference = f"APP-{stamp.year}-{app.id:04d}"
    return app


def edit_draft(
    session: Session,
    handle: str,
    reference: str,
    form: ApplicationForm,
    spec: Specification | None = None,
) -> Application:
    app = application(session, reference)
    lead = _lead(session, app, handle, "edit")
    advance(session, app, "edit")
    form.check_shape(spec or shipped())
    _fill(session, app, lead, form)
    return app


def submit(
    session: Session, handle: str, reference: str, spec: Specification | None = None
) -> Application:
    """Submit a draft through the automatic checks: refused at once for an excluded purpose,
    kept a draft (with the list of what is missing) when incomplete, else submitted with flags
    for the panel."""
    app = application(session, reference)
    _lead(session, app, handle, "submit")
    if ("submit", app.state) not in TRANSITIONS:
        raise NotAllowed(refusal(app, "submit"))
    form = form_of(app)
    # The specification may have changed since the draft was saved.
    check_items(form.items, spec or shipped())
    screening = screen(form)
    if not screening.refusals and screening.missing:
        raise UserError(
            f"{reference} is not complete, so it stays a draft: " + "; ".join(screening.missing)
        )
    stamp = now()
    app.submitted_at = stamp
    app.flags = screening.flags
    if screening.refusals:
        app.outcome_reason = " ".join(screening.refusals)
        advance(session, app, "submit", to="refused")
        record(
            session,
            "application.refused",
            "automatic checks",
            {**public(app), "reason": app.outcome_reason},
        )
    else:
        advance(session, app, "submit")
        record(session, "application.submitted", handle, {**public(app), "flags": app.flags})
    return app


def withdraw(session: Session, handle: str, reference: str, reason: str) -> Application:
    app = application(session, reference)
    _lead(session, app, handle, "withdraw")
    was = app.state
    advance(session, app, "withdraw")
    app.outcome_reason = reason.strip() or "withdrawn by the applicant"
    if was != "draft":  # a draft was never public
        record(
            session, "application.withdrawn", handle, {**public(app), "reason": app.outcome_reason}
        )
    return app


def form_of(app: Application) -> ApplicationForm:
    """An application's content as a form again (to edit a draft, or to check it)."""
    return ApplicationForm(
        **{name: getattr(app, name) for name in SCALAR_FIELDS},
        population=Population.from_json(app.population),
        items=tuple(Item(i.table_name, i.field_name, i.justification) for i in app.items),
        team=tuple(m.person.handle for m in app.team if m.person_id != app.lead_applicant_id),
        collaborators=tuple(
            o.organisation.name for o in app.organisations if o.role == "collaborator"
        ),
        funders=tuple(o.organisation.name for o in app.organisations if o.role == "funder"),
    )


def team(app: Application) -> list[Person]:
    return [m.person for m in app.team]


def organisation_ids(app: Application) -> set[int]:
    return {o.organisation_id for o in app.organisations}


def _lead(session: Session, app: Application, handle: str, action: str) -> Person:
    actor = person(session, handle)
    if actor.id != app.lead_applicant_id:
        raise NotAllowed(
            f"{handle} cannot {ACTION_WORDS[action]} {app.reference}: only its lead applicant, "
            f"{app.lead_applicant.handle}, can"
        )
    return actor


def _fill(session: Session, app: Application, lead: Person, form: ApplicationForm) -> None:
    for name in SCALAR_FIELDS:
        setattr(app, name, getattr(form, name))
    app.population = form.population.as_json()
    app.items = [
        DataItem(table_name=i.table, field_name=i.field, justification=i.justification)
        for i in form.items
    ]
    members = [lead] + [person(session, h) for h in dict.fromkeys(form.team) if h != lead.handle]
    outsiders = [m.handle for m in members if "applicant" not in m.roles]
    if outsiders:
        raise UserError(f"team: {', '.join(outsiders)} do not hold the applicant role")
    app.team = [TeamMember(person=m) for m in members]
    assert lead.organisation is not None  # every applicant has one (people.add_person)
    named = [(lead.organisation.name, "lead")]
    named += [(n, "collaborator") for n in form.collaborators]
    named += [(n, "funder") for n in form.funders]
    rows: list[ApplicationOrganisation] = []
    seen: set[int] = set()
    for position, (name, role) in enumerate(named):
        org = organisation(session, name)
        if org.id in seen:
            raise UserError(f"organisation {name!r} is named twice on the application")
        seen.add(org.id)
        rows.append(ApplicationOrganisation(organisation=org, role=role, position=position))
    app.organisations = rows


def public(app: Application) -> dict[str, object]:
    """What the public record says of an application (never its applicants' contact details)."""
    return {
        "application": app.reference,
        "title": app.title,
        "organisations": [o.organisation.name for o in app.organisations],
        "purpose": app.purpose_category,
        "commercial": app.commercial,
    }
