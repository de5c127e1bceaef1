"""A governance cast for tests: organisations, applicants, a panel, an administrator and output
checkers; a complete application form; and `bring_to`, which walks a new application to any
state by the service's own functions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import metadata
from gpdpr.governance import agreements, applications, panel, people
from gpdpr.governance.form import ApplicationForm, Item, Population
from gpdpr.governance.models import Agreement

T = TypeVar("T")

LEEDS, COUNCIL, PHARMA, CHARITY = (
    "University of Leeds",
    "Leeds City Council",
    "Pharma Analytics Ltd",
    "Diabetes Research Trust",
)
LEAD, COLLEAGUE, VENDOR, BOTH = "a.khan", "b.jones", "c.vendor", "d.both"
PANEL = ("p.one", "p.two", "p.three")
PANEL_FROM_LEEDS = "p.leeds"
ADMIN = "admin"
CHECKERS = ("k.one", "k.two")
FAR_FUTURE = datetime(2040, 1, 1, tzinfo=UTC)

FORM = ApplicationForm(
    title="Type 2 diabetes care and deprivation",
    purpose_category="research",
    lay_summary="Do people in poorer areas get the same diabetes checks?",
    technical_summary="Cohort of adults with type 2 diabetes; HbA1c checks by IMD decile.",
    expected_benefit="Shows where diabetes care falls short, so that it can be fixed.",
    legal_basis="public_task_research",
    data_from=date(2016, 1, 1),
    data_to=date(2026, 1, 1),
    duration_months=12,
    population=Population(min_age=18),
    items=(
        Item("patients", "patient", "to count people once"),
        Item("patients", "imd_decile", "the deprivation measure the study is about"),
        Item("clinical_events", "code", "to find diagnoses and HbA1c checks"),
        Item("clinical_events", "effective_date", "to place checks in time"),
    ),
    team=(COLLEAGUE,),
    funders=(CHARITY,),
)


def form(**changes: Any) -> ApplicationForm:
    return dataclasses.replace(FORM, **changes)


def act(engine: sa.Engine, do: Callable[[Session], T]) -> T:
    """Run `do` in one transaction, as the CLI and the portal do; what it returns stays
    readable afterwards."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return do(session)


def cast(engine: sa.Engine) -> None:
    def add(session: Session) -> None:
        people.add_person(
            session, None, ADMIN, "Admin", "admin@example.org", None, ["administrator"]
        )
        for name, kind in (
            (LEEDS, "university"),
            (COUNCIL, "local_authority"),
            (PHARMA, "commercial"),
            (CHARITY, "charity"),
        ):
            people.add_organisation(session, ADMIN, name, kind)
        for handle, org, roles in (
            (LEAD, LEEDS, ["applicant"]),
            (COLLEAGUE, LEEDS, ["applicant"]),
            (VENDOR, PHARMA, ["applicant"]),
            (BOTH, LEEDS, ["applicant", "output_checker"]),
            (PANEL[0], None, ["panel_member"]),
            (PANEL[1], COUNCIL, ["panel_member"]),
            (PANEL[2], None, ["panel_member"]),
            (PANEL_FROM_LEEDS, LEEDS, ["panel_member"]),
            (CHECKERS[0], None, ["output_checker"]),
            (CHECKERS[1], None, ["output_checker"]),
        ):
            name = handle.replace(".", " ").title()
            people.add_person(session, ADMIN, handle, name, f"{handle}@example.org", org, roles)

    act(engine, add)


def new_draft(engine: sa.Engine, lead: str = LEAD, **changes: Any) -> str:
    reference: str = act(
        engine, lambda s: applications.create_draft(s, lead, form(**changes)).reference
    )
    return reference


def votes(engine: sa.Engine, reference: str, choices: tuple[str, ...] = ("approve",) * 3) -> None:
    for member, choice in zip(PANEL, choices, strict=False):

        def vote(s: Session, m: str = member, c: str = choice) -> object:
            return panel.vote(s, m, reference, c)

        act(engine, vote)


def agreement_of(engine: sa.Engine, reference: str) -> str | None:
    def find(session: Session) -> str | None:
        app = applications.application(session, reference)
        return session.scalar(
            sa.select(Agreement.reference).where(Agreement.application_id == app.id)
        )

    return act(engine, find)


def bring_to(engine: sa.Engine, state: str) -> str:
    """A new application (led by LEAD) in `state`, reached the way people would reach it."""
    if state == "refused":  # by the automatic checks
        reference = new_draft(engine, uses_for_marketing=True)
        act(engine, lambda s: applications.submit(s, LEAD, reference))
        return reference
    reference = new_draft(engine)

    def approve() -> None:
        votes(engine, reference)
        act(engine, lambda s: panel.decide(s, ADMIN, reference, "Approved."))

    steps: dict[str, list[Callable[[], object]]] = {
        "draft": [],
        "withdrawn": [lambda: act(engine, lambda s: applications.withdraw(s, LEAD, reference, ""))],
    }
    path: list[tuple[str, Callable[[], object]]] = [
        ("submitted", lambda: act(engine, lambda s: applications.submit(s, LEAD, reference))),
        ("under_review", lambda: act(engine, lambda s: panel.start_review(s, ADMIN, reference))),
        ("approved", approve),
        ("agreement_active", lambda: act(engine, lambda s: agreements.issue(s, ADMIN, reference))),
    ]
    done: list[Callable[[], object]] = []
    for reached, step in path:
        done.append(step)
        steps[reached] = list(done)
    steps["expired"] = [*done, lambda: act(engine, lambda s: agreements.expire_due(s, FAR_FUTURE))]
    steps["revoked"] = [
        *done,
        lambda: act(
            engine,
            lambda s: agreements.revoke(s, ADMIN, agreement_of(engine, reference) or "", "breach"),
        ),
    ]
    for step in steps[state]:
        step()
    assert state_of(engine, reference) == state
    return reference


def state_of(engine: sa.Engine, reference: str) -> str:
    state: str = act(engine, lambda s: applications.application(s, reference).state)
    return state


def snapshot(engine: sa.Engine) -> dict[str, list[str]]:
    """Every row of every table of the central database, to show nothing changed."""
    with engine.connect() as connection:
        return {
            name: sorted(repr(tuple(row)) for row in connection.execute(sa.select(table)))
            for name, table in metadata().tables.items()
        }


def later(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)
