"""Applications, from both sides: applicants write, submit and withdraw them; the panel reviews
them, declares conflicts and votes; the administrator starts reviews, records decisions with
their minutes and conditions, and issues agreements. Every action is one call to the governance
service in one transaction, so a refusal changes nothing.

Who sees an application: its lead applicant and team; panel members and administrators once it
is submitted. Anyone else gets the same "nothing here" as for a reference that does not exist.
"""

from __future__ import annotations

from datetime import date
from functools import cache
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from gpdpr.errors import UserError
from gpdpr.governance import agreements, applications, panel, people
from gpdpr.governance.form import ApplicationForm, Item, Population
from gpdpr.governance.models import Agreement, Application, Conflict, Decision, TeamMember, Vote
from gpdpr.governance.vocabulary import (
    CATEGORIES,
    LEGAL_BASES,
    NDOO_EXEMPTIONS,
    PURPOSES,
    SEXES,
    STATES,
)
from gpdpr.portal.pages import not_found, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import GuardedRoute, PortalSession, allow, staff_session
from gpdpr.spec import shipped

router = APIRouter(route_class=GuardedRoute)
REVIEWERS = ("panel_member", "administrator")


# ---- who may see what --------------------------------------------------------------------------


def visible(session: Session, who: PortalSession, reference: str) -> Application | None:
    """The application if `who` may see it, else None (also when there is no such one)."""
    app = session.scalar(sa.select(Application).where(Application.reference == reference))
    if app is None or who.handle is None:
        return None
    if who.roles & set(REVIEWERS) and app.state != "draft":
        return app
    if "applicant" in who.roles:
        me = people.person(session, who.handle)
        if any(m.person_id == me.id for m in app.team):
            return app
    return None


def mine(session: Session, handle: str) -> list[Application]:
    me = people.person(session, handle)
    return list(
        session.scalars(
            sa.select(Application)
            .join(TeamMember, TeamMember.application_id == Application.id)
            .where(TeamMember.person_id == me.id)
            .order_by(Application.id.desc())
        )
    )


# ---- the form ----------------------------------------------------------------------------------


def form_from(data: FormData) -> ApplicationForm:
    """An ApplicationForm from the portal's form, or a UserError naming the field."""

    def text(name: str) -> str:
        return str(data.get(name, "")).strip()

    def day(name: str, label: str) -> date | None:
        value = text(name)
        if not value:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise UserError(f"{label}: {value!r} is not a date (use the form 2016-01-31)") from None

    def number(name: str, label: str, default: int | None) -> int | None:
        value = text(name)
        if not value:
            return default
        if not value.isdigit():
            raise UserError(f"{label}: {value!r} is not a whole number")
        return int(value)

    items = []
    for chosen in data.getlist("items"):
        if str(chosen) not in readable_items():
            raise UserError(
                f"data item {str(chosen)!r}: no research run can read it, so it cannot be asked "
                "for; choose from the items the form lists"
            )
        table, _, field = str(chosen).partition(".")
        items.append(Item(table, field, text(f"why.{chosen}")))
    exemption = text("ndoo_exemption") or None
    return ApplicationForm(
        title=text("title"),
        purpose_category=text("purpose_category"),
        lay_summary=text("lay_summary"),
        technical_summary=text("technical_summary"),
        expected_benefit=text("expected_benefit"),
        legal_basis=text("legal_basis"),
        data_from=day("data_from", "Records from"),
        data_to=day("data_to", "Records to"),
        commercial=data.get("commercial") == "yes",
        commercial_benefit=text("commercial_benefit"),
        uses_for_marketing=data.get("uses_for_marketing") == "yes",
        uses_for_insurance=data.get("uses_for_insurance") == "yes",
        ndoo_exemption=exemption,
        ndoo_exemption_reason=text("ndoo_exemption_reason"),
        duration_months=number("duration_months", "Duration", 12) or 0,
        population=Population(
            number("min_age", "Youngest age", None),
            number("max_age", "Oldest age", None),
            tuple(str(s) for s in data.getlist("sexes")),
            tuple(r.strip() for r in text("regions").replace(",", " ").split()),
        ),
        items=tuple(items),
        team=tuple(h.strip() for h in text("team").replace(",", " ").split()),
        collaborators=tuple(str(o) for o in data.getlist("collaborators")),
        funders=tuple(str(o) for o in data.getlist("funders")),
    )


def _values(form: ApplicationForm | None) -> dict[str, Any]:
    """What the form shows: an application's content, or empty."""
    if form is None:
        return {"duration_months": 12, "items": {}, "sexes": [], "collaborators": [], "funders": []}
    return {
        **{k: getattr(form, k) for k in ApplicationForm.__dataclass_fields__},
        "min_age": form.population.min_age,
        "max_age": form.population.max_age,
        "sexes": list(form.population.sexes),
        "regions": " ".join(form.population.regions),
        "items": {f"{i.table}.{i.field}": i.justification for i in form.items},
        "team": " ".join(form.team),
    }


# The task list's sections, in order, and the form fields each one owns: a step posts only its
# own fields, and the rest of the draft is carried over as it was saved.
SECTIONS = {
    "about": "About the project",
    "purpose": "Purpose and legal basis",
    "team": "The team and organisations",
    "items": "The data items asked for",
    "population": "The population and period",
}
FIELDS = {
    "about": ("title", "purpose_category", "lay_summary", "technical_summary", "expected_benefit"),
    "purpose": (
        "legal_basis",
        "duration_months",
        "commercial",
        "commercial_benefit",
        "uses_for_marketing",
        "uses_for_insurance",
        "ndoo_exemption",
        "ndoo_exemption_reason",
    ),
    "team": ("team", "collaborators", "funders"),
    "items": ("items",),
    "population": ("data_from", "data_to", "min_age", "max_age", "sexes", "regions"),
}


def _owned(section: str, name: str) -> bool:
    return name in FIELDS[section] or (section == "items" and name.startswith("why."))


def _fields(form: ApplicationForm) -> list[tuple[str, str]]:
    """A saved form as the fields the one-page form would post, so `form_from` reads it back."""
    values = _values(form)
    fields = [(k, str(values[k] or "")) for k in FIELDS["about"]]
    fields += [(k, str(values[k] or "")) for k in ("legal_basis", "commercial_benefit")]
    fields += [(k, str(values[k] or "")) for k in ("ndoo_exemption", "ndoo_exemption_reason")]
    fields += [("duration_months", str(form.duration_months))]
    flags = ("commercial", "uses_for_marketing", "uses_for_insurance")
    fields += [(k, "yes") for k in flags if values[k]]
    fields += [("team", values["team"])]
    fields += [("collaborators", o) for o in form.collaborators]
    fields += [("funders", o) for o in form.funders]
    for key, why in values["items"].items():
        fields += [("items", key), (f"why.{key}", why)]
    fields += [(k, day.isoformat()) for k in ("data_from", "data_to") if (day := values[k])]
    fields += [(k, str(values[k])) for k in ("min_age", "max_age") if values[k] is not None]
    fields += [("sexes", x) for x in form.population.sexes]
    fields += [("regions", values["regions"])]
    return fields


def merged(saved: ApplicationForm, section: str, posted: FormData) -> FormData:
    """The whole form: the saved draft with one section replaced by what was posted."""
    fields: list[tuple[str, str | UploadFile]] = [
        (k, v) for k, v in _fields(saved) if not _owned(section, k)
    ]
    fields += [(k, str(v)) for k, v in posted.multi_items() if _owned(section, k)]
    return FormData(fields)


def status(form: ApplicationForm, section: str) -> str:
    """Not started, in progress or completed, from what the draft holds: a section is completed
    when everything the automatic checks need from it is there."""
    if section == "about":
        parts = [form.title, form.lay_summary, form.technical_summary, form.expected_benefit]
    elif section == "purpose":
        parts = [form.legal_basis]
        if form.commercial:
            parts.append(form.commercial_benefit)
        if form.ndoo_exemption:
            parts.append(form.ndoo_exemption_reason)
    elif section == "team":
        # The lead applicant and their organisation are the team until others are named, and
        # naming others is optional: the team a draft holds is always a whole answer, and
        # `team_summary` says beside the status which team that is.
        return "completed"
    elif section == "items":  # an item without its reason is begun, not done
        if not form.items:
            return "not started"
        return "completed" if all(i.justification for i in form.items) else "in progress"
    else:
        parts = [str(form.data_from or ""), str(form.data_to or "")]
    filled = sum(1 for p in parts if p)
    return "completed" if filled == len(parts) else "in progress" if filled else "not started"


def team_summary(form: ApplicationForm) -> str:
    """The team a draft holds, in a line for the task list (so "Completed" says which team)."""
    if not (form.team or form.collaborators or form.funders):
        return "Only you, at your organisation: nobody else named"
    parts = [
        f"{n} other named researcher{'s' if n != 1 else ''}" if (n := len(form.team)) else "",
        f"{n} collaborating organisation{'s' if n != 1 else ''}"
        if (n := len(form.collaborators))
        else "",
        f"{n} funder{'s' if n != 1 else ''}" if (n := len(form.funders)) else "",
    ]
    return "You and " + ", ".join(p for p in parts if p)


def _answers(form: ApplicationForm) -> list[tuple[str, str, list[tuple[str, str]], str]]:
    """What the check-your-answers page lists, section by section."""
    yes_no = {True: "Yes", False: "No"}
    pop = form.population
    rows = {
        "about": [
            ("Title", form.title),
            ("Purpose", PURPOSES.get(form.purpose_category, form.purpose_category)),
            ("Summary in plain words", form.lay_summary),
            ("Technical summary", form.technical_summary),
            ("Expected benefit", form.expected_benefit),
        ],
        "purpose": [
            ("Legal basis", LEGAL_BASES.get(form.legal_basis, form.legal_basis)),
            ("Access needed for", f"{form.duration_months} months"),
            ("Commercial interest", yes_no[form.commercial] + f" {form.commercial_benefit}"),
            ("Used for marketing", yes_no[form.uses_for_marketing]),
            ("Used for insurance", yes_no[form.uses_for_insurance]),
            (
                "National Data Opt-out exemption",
                "None: the opt-out applies"
                if form.ndoo_exemption is None
                else f"{NDOO_EXEMPTIONS.get(form.ndoo_exemption, form.ndoo_exemption)}: "
                f"{form.ndoo_exemption_reason}",
            ),
        ],
        "team": [
            ("Other named researchers", ", ".join(form.team) or "None"),
            ("Collaborating organisations", "; ".join(form.collaborators) or "None"),
            ("Funders", "; ".join(form.funders) or "None"),
        ],
        "items": [(f"{i.table}.{i.field}", i.justification) for i in form.items],
        "population": [
            ("Records from", str(form.data_from or "")),
            ("Records to", str(form.data_to or "")),
            (
                "Ages",
                f"{pop.min_age if pop.min_age is not None else 'any'} to "
                f"{pop.max_age if pop.max_age is not None else 'any'}",
            ),
            ("Sexes", ", ".join(pop.sexes) or "Everyone"),
            ("Regions", " ".join(pop.regions) or "Everywhere"),
        ],
    }
    return [(key, SECTIONS[key], rows[key], status(form, key)) for key in SECTIONS]


def _form_page(
    request: Request,
    values: dict[str, Any],
    action: str,
    status_code: int = 200,
    errors: list[str] | None = None,
    sections: tuple[str, ...] = tuple(SECTIONS),
    reference: str | None = None,
) -> Response:
    organisations = portal_of(request).read(lambda s: [o.name for o in people.organisations(s)])
    return render(
        request,
        "application_form.html.j2",
        status_code=status_code,
        values=values,
        action=action,
        spec=shipped(),
        offered={
            name: [f for f in table.fields if f"{name}.{f.name}" in readable_items()]
            for name, table in shipped().tables.items()
        },
        categories=CATEGORIES,
        purposes=PURPOSES,
        legal_bases=LEGAL_BASES,
        exemptions=NDOO_EXEMPTIONS,
        sexes=SEXES,
        organisations=organisations,
        errors=errors or [],
        sections=[(key, SECTIONS[key]) for key in sections],
        reference=reference,
    )


def _values_from_post(data: FormData) -> dict[str, Any]:
    """The form as it was sent, to show again beside the error."""
    keys = [
        "title",
        "purpose_category",
        "lay_summary",
        "technical_summary",
        "expected_benefit",
        "legal_basis",
        "data_from",
        "data_to",
        "commercial_benefit",
        "ndoo_exemption",
        "ndoo_exemption_reason",
        "duration_months",
        "min_age",
        "max_age",
        "regions",
        "team",
    ]
    values: dict[str, Any] = {k: str(data.get(k, "")) for k in keys}
    for flag in ("commercial", "uses_for_marketing", "uses_for_insurance"):
        values[flag] = data.get(flag) == "yes"
    values["sexes"] = [str(s) for s in data.getlist("sexes")]
    values["collaborators"] = [str(o) for o in data.getlist("collaborators")]
    values["funders"] = [str(o) for o in data.getlist("funders")]
    values["items"] = {str(i): str(data.get(f"why.{i}", "")) for i in data.getlist("items")}
    return values


# ---- applicants --------------------------------------------------------------------------------


@cache
def readable_items() -> frozenset[str]:
    """The data items ("table.field") a research run can read: the fields behind every column of
    the research environment's views, with the patient and period fields each view needs. Any
    other field of the specification (a record's id, its last-modified time) no run reads, so the
    form does not offer it."""
    from gpdpr.tre.query.schema import TABLES
    from gpdpr.tre.views import required_fields

    wanted = required_fields({name: list(table.columns) for name, table in TABLES.items()})
    return frozenset(f"{table}.{field}" for table, fields in wanted.items() for field in fields)


@router.get("/applications")
@allow("applicant")
def list_applications(request: Request) -> Response:
    who = staff_session(request)
    assert who.handle is not None
    handle = who.handle
    listed = portal_of(request).read(
        lambda s: [
            (a.reference, a.title, a.state, a.lead_applicant.handle) for a in mine(s, handle)
        ]
    )
    return render(request, "applications.html.j2", listed=listed, states=STATES)


@router.get("/applications/new")
@allow("applicant")
def new_application(request: Request) -> Response:
    return _form_page(request, _values(None), "/applications/new", sections=("about",))


@router.post("/applications/new")
@allow("applicant")
async def create_application(request: Request) -> Response:
    data = await request.form()
    handle = staff_session(request).handle
    assert handle is not None
    try:
        form = form_from(data)
        reference = await run_in_threadpool(
            portal_of(request).act,
            lambda s: applications.create_draft(s, handle, form).reference,
        )
    except UserError as exc:
        step = ("about",) if data.get("step") == "about" else tuple(SECTIONS)
        values = _values_from_post(data)
        return _form_page(request, values, "/applications/new", 400, [str(exc)], step)
    staff_session(request).flash.append(
        f"{reference} is saved as a draft. Submit it when it is complete."
    )
    # A person filling in the steps goes on to the task list; a script's one-page post, to the
    # application.
    after = "/edit" if data.get("step") == "about" else ""
    return RedirectResponse(f"/applications/{reference}{after}", status_code=303)


@router.get("/applications/{reference}")
@allow("applicant", *REVIEWERS)
def show_application(request: Request, reference: str) -> Response:
    who = staff_session(request)
    shown = portal_of(request).read(lambda s: _details(s, who, reference))
    if shown is None:
        return not_found(request)
    return render(request, "application.html.j2", **shown)


def _details(session: Session, who: PortalSession, reference: str) -> dict[str, Any] | None:
    app = visible(session, who, reference)
    if app is None:
        return None
    assert who.handle is not None
    me = people.person(session, who.handle)
    votes = list(session.scalars(sa.select(Vote).where(Vote.application_id == app.id)))
    conflicts = list(session.scalars(sa.select(Conflict).where(Conflict.application_id == app.id)))
    decision = session.get(Decision, app.id)
    agreement = session.scalar(sa.select(Agreement).where(Agreement.application_id == app.id))
    reviewer = bool(who.roles & set(REVIEWERS))
    return {
        "app": app,
        "form": applications.form_of(app),
        "states": STATES,
        "purposes": PURPOSES,
        "legal_bases": LEGAL_BASES,
        "is_lead": app.lead_applicant_id == me.id,
        "is_member": "panel_member" in who.roles,
        "is_admin": "administrator" in who.roles,
        "reviewer": reviewer,
        "my_conflicts": panel.conflicts_of(session, me, app) if "panel_member" in who.roles else [],
        "my_vote": next((v for v in votes if v.person_id == me.id), None),
        "votes": votes if reviewer else [],
        "counted": len(panel.counted_votes(session, app)) if reviewer else 0,
        "conflicts": conflicts if reviewer else [],
        "decision": decision,
        "agreement": agreement,
        "quorum": request_quorum(),
    }


def request_quorum() -> int:
    import os

    from gpdpr.governance.vocabulary import DEFAULT_QUORUM

    value = os.environ.get("GPDPR_PANEL_QUORUM", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_QUORUM


def _own_draft(request: Request, reference: str) -> ApplicationForm | None:
    """The draft's content if the signed-in person leads it and it is still a draft."""
    who = staff_session(request)

    def find(s: Session) -> ApplicationForm | None:
        app = visible(s, who, reference)
        if app is None or app.state != "draft" or app.lead_applicant.handle != who.handle:
            return None
        return applications.form_of(app)

    return portal_of(request).read(find)


@router.get("/applications/{reference}/edit")
@allow("applicant")
def task_list(request: Request, reference: str) -> Response:
    form = _own_draft(request, reference)
    if form is None:
        return not_found(request)
    tasks = [(key, heading, status(form, key)) for key, heading in SECTIONS.items()]
    done = sum(1 for t in tasks if t[2] == "completed")
    return render(
        request,
        "application_tasks.html.j2",
        form=form,
        reference=reference,
        tasks=tasks,
        done=done,
        hints={"team": team_summary(form)},
    )


@router.get("/applications/{reference}/edit/{section}")
@allow("applicant")
def edit_step(request: Request, reference: str, section: str) -> Response:
    form = _own_draft(request, reference) if section in SECTIONS else None
    if form is None:
        return not_found(request)
    action = f"/applications/{reference}/edit/{section}"
    return _form_page(request, _values(form), action, sections=(section,), reference=reference)


@router.post("/applications/{reference}/edit/{section}")
@allow("applicant")
async def save_step(request: Request, reference: str, section: str) -> Response:
    form = _own_draft(request, reference) if section in SECTIONS else None
    if form is None:
        return not_found(request)
    whole = merged(form, section, await request.form())
    handle = staff_session(request).handle
    assert handle is not None
    try:
        await run_in_threadpool(
            portal_of(request).act,
            lambda s: applications.edit_draft(s, handle, reference, form_from(whole)),
        )
    except UserError as exc:
        action = f"/applications/{reference}/edit/{section}"
        values = _values_from_post(whole)
        return _form_page(request, values, action, 400, [str(exc)], (section,), reference)
    staff_session(request).flash.append(f"{SECTIONS[section]}: saved.")
    return RedirectResponse(f"/applications/{reference}/edit", status_code=303)


@router.get("/applications/{reference}/check")
@allow("applicant")
def check_answers(request: Request, reference: str) -> Response:
    form = _own_draft(request, reference)
    if form is None:
        return not_found(request)
    return render(request, "application_check.html.j2", reference=reference, answers=_answers(form))


@router.post("/applications/{reference}/edit")
@allow("applicant")
async def save_application(request: Request, reference: str) -> Response:
    return await _lead_action(
        request,
        reference,
        lambda s, handle, data: applications.edit_draft(s, handle, reference, form_from(data)),
        "Your changes are saved.",
        form_page=True,
    )


@router.post("/applications/{reference}/submit")
@allow("applicant")
async def submit_application(request: Request, reference: str) -> Response:
    return await _lead_action(
        request,
        reference,
        lambda s, handle, _: applications.submit(s, handle, reference),
        None,
    )


@router.post("/applications/{reference}/withdraw")
@allow("applicant")
async def withdraw_application(request: Request, reference: str) -> Response:
    return await _lead_action(
        request,
        reference,
        lambda s, handle, data: applications.withdraw(
            s, handle, reference, str(data.get("reason", ""))
        ),
        f"{reference} is withdrawn.",
    )


async def _lead_action(
    request: Request,
    reference: str,
    do: Any,
    done: str | None,
    form_page: bool = False,
) -> Response:
    data = await request.form()
    who = staff_session(request)
    handle = who.handle
    portal = portal_of(request)
    if portal.read(lambda s: visible(s, who, reference)) is None:
        return not_found(request)

    def act(s: Session) -> Application:
        app: Application = do(s, handle, data)
        return app

    try:
        app = await run_in_threadpool(portal.act, act)
    except UserError as exc:
        if form_page:
            return _form_page(
                request, _values_from_post(data), f"/applications/{reference}/edit", 400, [str(exc)]
            )
        return _detail_with_error(request, reference, str(exc))
    if done is None:  # a submission: say where it went
        done = (
            f"{reference} is refused by the automatic checks: {app.outcome_reason}"
            if app.state == "refused"
            else f"{reference} is submitted. The panel will review it."
        )
    who.flash.append(done)
    return RedirectResponse(f"/applications/{reference}", status_code=303)


def _detail_with_error(request: Request, reference: str, error: str) -> Response:
    who = staff_session(request)
    shown = portal_of(request).read(lambda s: _details(s, who, reference))
    if shown is None:
        return not_found(request)
    return render(request, "application.html.j2", status_code=400, errors=[error], **shown)


# ---- the panel ---------------------------------------------------------------------------------


@router.get("/panel")
@allow(*REVIEWERS)
def panel_list(request: Request) -> Response:
    listed = portal_of(request).read(
        lambda s: [
            (a.reference, a.title, a.state, a.organisations[0].organisation.name, a.flags)
            for a in applications.applications(s)
            if a.state != "draft"
        ]
    )
    return render(request, "panel.html.j2", listed=listed, states=STATES)


async def _review_action(request: Request, reference: str, do: Any, done: str) -> Response:
    data = await request.form()
    who = staff_session(request)
    portal = portal_of(request)
    if portal.read(lambda s: visible(s, who, reference)) is None:
        return not_found(request)
    try:
        await run_in_threadpool(portal.act, lambda s: do(s, who.handle, data))
    except UserError as exc:
        return _detail_with_error(request, reference, str(exc))
    who.flash.append(done)
    return RedirectResponse(f"/applications/{reference}", status_code=303)


@router.post("/panel/{reference}/start-review")
@allow("administrator")
async def start_review(request: Request, reference: str) -> Response:
    return await _review_action(
        request,
        reference,
        lambda s, handle, _: panel.start_review(s, handle, reference),
        f"The review of {reference} has started: panel members can vote.",
    )


@router.post("/panel/{reference}/conflict")
@allow("panel_member")
async def declare_conflict(request: Request, reference: str) -> Response:
    return await _review_action(
        request,
        reference,
        lambda s, handle, data: panel.declare_conflict(
            s, handle, reference, str(data.get("reason", ""))
        ),
        "Your conflict of interest is recorded; you will not vote on this application.",
    )


@router.post("/panel/{reference}/vote")
@allow("panel_member")
async def cast_vote(request: Request, reference: str) -> Response:
    return await _review_action(
        request,
        reference,
        lambda s, handle, data: panel.vote(
            s, handle, reference, str(data.get("vote", "")), str(data.get("comment", ""))
        ),
        "Your vote is recorded.",
    )


@router.post("/panel/{reference}/decide")
@allow("administrator")
async def decide(request: Request, reference: str) -> Response:
    def do(s: Session, handle: str, data: FormData) -> Decision:
        conditions = str(data.get("conditions", "")).splitlines()
        return panel.decide(
            s, handle, reference, str(data.get("minutes", "")), conditions, request_quorum()
        )

    return await _review_action(
        request, reference, do, f"The panel's decision on {reference} is recorded."
    )


@router.post("/panel/{reference}/agreement")
@allow("administrator")
async def issue_agreement(request: Request, reference: str) -> Response:
    return await _review_action(
        request,
        reference,
        lambda s, handle, _: agreements.issue(s, handle, reference),
        f"The data sharing agreement for {reference} is issued and in force.",
    )
