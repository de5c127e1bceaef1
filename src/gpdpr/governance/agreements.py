"""Agreements: what an approved application may use, from when until when, under what
conditions; and `authorise`, the one gate the research environment passes through.

Access is decided by the agreement's dates and revocation at the moment of asking, so it ends at
the end date with nobody acting. `expire_due` only brings the recorded status (and the public
register) up to date with what the dates already enforce.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.applications import advance, application, public, refusal
from gpdpr.governance.models import Agreement, Decision
from gpdpr.governance.people import acting, person
from gpdpr.governance.vocabulary import NDOO_EXEMPTIONS, TRANSITIONS
from gpdpr.spec import Specification, shipped

EXPIRY_ACTOR = "gpdpr (end date reached)"


@dataclass(frozen=True)
class Scope:
    """What one person may use under one agreement, as the research environment applies it."""

    agreement: str
    application: str
    tables: dict[str, list[str]]
    data_from: date
    data_to: date
    population: dict[str, Any]
    national_data_opt_out_applied: bool
    ends_on: date


def add_months(start: date, months: int) -> date:
    month = start.month - 1 + months
    year, month = start.year + month // 12, month % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def agreement(session: Session, reference: str) -> Agreement:
    found = session.scalar(sa.select(Agreement).where(Agreement.reference == reference))
    if found is None:
        raise UserError(
            f"no agreement {reference!r}: `gpdpr governance show APP-...` gives an approved "
            "application's agreement, and the register lists them all"
        )
    return found


def agreements(session: Session) -> list[Agreement]:
    return list(session.scalars(sa.select(Agreement).order_by(Agreement.id)))


def issue(
    session: Session,
    handle: str,
    reference: str,
    starts_on: date | None = None,
    ends_on: date | None = None,
    spec: Specification | None = None,
) -> Agreement:
    """The agreement for an approved application: its scope is exactly what the panel
    approved, for at most the duration asked for, from today or a later day."""
    issuer = acting(session, handle, "administrator", "issue an agreement")
    app = application(session, reference)
    if ("issue_agreement", app.state) not in TRANSITIONS:
        raise NotAllowed(refusal(app, "issue_agreement"))
    today = now().date()
    starts_on = starts_on or today
    longest = add_months(starts_on, app.duration_months)
    ends_on = ends_on or longest
    if starts_on < today:
        raise UserError(f"an agreement cannot start in the past ({starts_on}); today is {today}")
    if not starts_on < ends_on <= longest:
        raise UserError(
            f"the end date {ends_on} must be after the start {starts_on} and no later than "
            f"{longest}, the {app.duration_months} months the panel approved"
        )
    decision = session.get(Decision, app.id)
    assert decision is not None and decision.outcome == "approved"
    assert app.data_from is not None and app.data_to is not None  # checked on submission
    tables: dict[str, list[str]] = {}
    for item in app.items:
        tables.setdefault(item.table_name, []).append(item.field_name)
    scope = {
        "specification": (spec or shipped()).version,
        "tables": tables,
        "data_from": app.data_from.isoformat(),
        "data_to": app.data_to.isoformat(),
        "population": app.population,
        "national_data_opt_out": (
            "applied"
            if app.ndoo_exemption is None
            else f"not applied: {NDOO_EXEMPTIONS[app.ndoo_exemption].lower()}"
        ),
    }
    advance(session, app, "issue_agreement")
    made = Agreement(
        reference=f"pending-{app.reference}",
        application=app,
        status="active",
        starts_on=starts_on,
        ends_on=ends_on,
        scope=scope,
        conditions=decision.conditions,
        issued_by_id=issuer.id,
        issued_at=now(),
        revoked_at=None,
        revoked_reason="",
    )
    session.add(made)
    session.flush()
    made.reference = f"DSA-{starts_on.year}-{made.id:04d}"
    record(
        session,
        "agreement.issued",
        handle,
        {
            **public(app),
            "agreement": made.reference,
            "starts_on": starts_on.isoformat(),
            "ends_on": ends_on.isoformat(),
            "tables": tables,
            "national_data_opt_out": scope["national_data_opt_out"],
        },
    )
    return made


def revoke(session: Session, handle: str, reference: str, reason: str) -> Agreement:
    """End an agreement now (a breach of its conditions, say). Access stops at once."""
    acting(session, handle, "administrator", "revoke an agreement")
    made = agreement(session, reference)
    expire_due(session)  # an agreement past its end date has ended already: nothing to revoke
    if not reason.strip():
        raise UserError("say why the agreement is revoked: the reason is published")
    advance(session, made.application, "revoke")
    made.status = "revoked"
    made.revoked_at = now()
    made.revoked_reason = reason.strip()
    record(
        session,
        "agreement.revoked",
        handle,
        {
            "agreement": reference,
            "application": made.application.reference,
            "reason": made.revoked_reason,
        },
    )
    return made


def expire_due(session: Session, at: datetime | None = None) -> list[Agreement]:
    """Mark every active agreement past its end date expired (and say so publicly)."""
    today = (at or now()).astimezone(UTC).date()
    due = list(
        session.scalars(
            sa.select(Agreement).where(Agreement.status == "active", Agreement.ends_on <= today)
        )
    )
    for made in due:
        advance(session, made.application, "expire")
        made.status = "expired"
        record(
            session,
            "agreement.expired",
            EXPIRY_ACTOR,
            {"agreement": made.reference, "ended_on": made.ends_on.isoformat()},
        )
    return due


def in_force(made: Agreement, at: datetime) -> str | None:
    """Why `made` gives no access at `at` (None: it does)."""
    day = at.astimezone(UTC).date()
    if made.revoked_at is not None:
        return f"it was revoked on {made.revoked_at:%Y-%m-%d} ({made.revoked_reason})"
    if day >= made.ends_on:
        return f"it ended on {made.ends_on} (access stops at its end date)"
    if day < made.starts_on:
        return f"it starts on {made.starts_on}"
    return None


def authorise(
    session: Session,
    handle: str,
    reference: str,
    wanted: Mapping[str, Iterable[str]],
    at: datetime | None = None,
) -> Scope:
    """Let `handle` use the fields `wanted` ({table: fields}) under agreement `reference` at
    time `at`, or refuse, saying why: only a named member of the project's team, only while
    the agreement is in force, only within its scope."""
    at = at or now()
    who = person(session, handle)
    made = agreement(session, reference)
    why_not = in_force(made, at)
    if why_not is not None:
        raise NotAllowed(f"no access under {reference}: {why_not}")
    if not any(m.person_id == who.id for m in made.application.team):
        raise NotAllowed(
            f"no access under {reference}: {handle} is not named on its team "
            f"(application {made.application.reference})"
        )
    granted: dict[str, list[str]] = made.scope["tables"]
    outside = sorted(
        f"{table}.{name}"
        for table, names in wanted.items()
        for name in names
        if name not in granted.get(table, [])
    )
    if outside:
        raise NotAllowed(
            f"no access under {reference} to {', '.join(outside)}: outside the agreement's "
            "scope (a new application is needed for more data)"
        )
    return Scope(
        agreement=made.reference,
        application=made.application.reference,
        tables={t: list(f) for t, f in granted.items()},
        data_from=date.fromisoformat(made.scope["data_from"]),
        data_to=date.fromisoformat(made.scope["data_to"]),
        population=dict(made.scope["population"]),
        national_data_opt_out_applied=made.scope["national_data_opt_out"] == "applied",
        ends_on=made.ends_on,
    )
