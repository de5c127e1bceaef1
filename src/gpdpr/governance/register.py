"""The Data Uses Register: every agreement, the decision behind it and every release made under
it, plus every application refused, generated from the database (never edited by hand) as JSON,
CSV and HTML.

The JSON is the register; CSV and HTML are views of it, so the three cannot disagree. Nothing in
it names a patient, and applicants appear by organisation, never by contact details.

Each release's files are published beside the register, in `releases/<release id>/`, with
`definition.json`, the exact query definition that made them (its SHA-256 is the release's
`code_sha256`); the research environment puts them there when the release is made.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.models import now
from gpdpr.governance.agreements import in_force
from gpdpr.governance.models import (
    Agreement,
    Application,
    Conflict,
    Decision,
    Person,
    Release,
    Vote,
)
from gpdpr.governance.vocabulary import (
    LEGAL_BASES,
    ORGANISATION_KINDS,
    PURPOSES,
    STATES,
)
from gpdpr.tre.models import FileReview, ReleaseRequest, RequestFile

FILES = {"json": "register.json", "csv": "register.csv", "html": "index.html"}
RELEASES_FOLDER = "releases"
DEFINITION_FILE = "definition.json"
CSV_COLUMNS = (
    "agreement",
    "application",
    "title",
    "status",
    "organisations",
    "organisation_kinds",
    "purpose",
    "lay_summary",
    "expected_benefit",
    "data_items",
    "data_from",
    "data_to",
    "legal_basis",
    "commercial",
    "commercial_benefit",
    "national_data_opt_out",
    "starts_on",
    "ends_on",
    "revoked",
    "conditions",
    "decision",
    "decided_on",
    "minutes",
    "releases",
)


def release_folder(release_id: int) -> str:
    """Where a release's files are published, relative to the register's folder."""
    return f"{RELEASES_FOLDER}/{release_id}"


def build(session: Session, at: datetime | None = None) -> dict[str, Any]:
    """The register as data, as it stands at `at`."""
    at = at or now()
    agreements = session.scalars(sa.select(Agreement).order_by(Agreement.id))
    refused = session.scalars(
        sa.select(Application).where(Application.state == "refused").order_by(Application.id)
    )
    return {
        "register": "gpdpr Data Uses Register",
        "as_of": at.astimezone(UTC).isoformat(timespec="seconds"),
        "agreements": [_agreement(session, a, at) for a in agreements],
        "refused": [_refused(session, a) for a in refused],
    }


def write(session: Session, out: Path, at: datetime | None = None) -> dict[str, Path]:
    """Write the register into folder `out` (made if missing); the files written, by format.
    Each file is written beside its final name and renamed into place, so a reader never sees
    half a register."""
    register = build(session, at)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "json": orjson.dumps(register, option=orjson.OPT_INDENT_2).decode() + "\n",
        "csv": to_csv(register),
        "html": to_html(register, session, out),
    }
    written = {}
    for kind, text in texts.items():
        path = out / FILES[kind]
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
        written[kind] = path
    return written


def to_csv(register: dict[str, Any]) -> str:
    """One row per agreement; lists joined with '; '."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for a in register["agreements"]:
        decision = a["decision"]
        writer.writerow(
            {
                "agreement": a["agreement"],
                "application": a["application"],
                "title": a["title"],
                "status": a["status"],
                "organisations": "; ".join(o["name"] for o in a["organisations"]),
                "organisation_kinds": "; ".join(o["kind"] for o in a["organisations"]),
                "purpose": a["purpose"],
                "lay_summary": a["lay_summary"],
                "expected_benefit": a["expected_benefit"],
                "data_items": "; ".join(f"{i['table']}.{i['field']}" for i in a["data_items"]),
                "data_from": a["data_from"],
                "data_to": a["data_to"],
                "legal_basis": a["legal_basis"],
                "commercial": "yes" if a["commercial"] else "no",
                "commercial_benefit": a["commercial_benefit"],
                "national_data_opt_out": a["national_data_opt_out"],
                "starts_on": a["starts_on"],
                "ends_on": a["ends_on"],
                "revoked": a["revoked"]["on"] if a["revoked"] else "",
                "conditions": "; ".join(a["conditions"]),
                "decision": decision["outcome"],
                "decided_on": decision["decided_on"],
                "minutes": decision["minutes"],
                "releases": "; ".join(r["title"] for r in a["releases"]),
            }
        )
    return buffer.getvalue()


def to_html(
    register: dict[str, Any], session: Session | None = None, folder: Path | None = None
) -> str:
    """The register as a page of its own: the portal's register page, one template for both
    (gpdpr.portal.register_view), with the questions in words when `session` is given and the
    released measures drawn when `folder` (the register's folder) is."""
    from gpdpr.portal import register_view  # the page is the portal's; the data is this module's

    return register_view.standalone(register, session, folder)


def timeline(register: dict[str, Any], width: int = 720, row: int = 22) -> dict[str, Any]:
    """Where each agreement's bar goes on the register's timeline (start to end, one row each,
    with today marked): the geometry only, so the template holds the drawing."""
    agreements = register["agreements"]
    if not agreements:
        return {"bars": [], "height": 0, "width": width, "today": None, "years": []}
    today = date.fromisoformat(register["as_of"][:10])
    first = min(date.fromisoformat(a["starts_on"]) for a in agreements)
    last = max(date.fromisoformat(a["ends_on"]) for a in agreements)
    first = date(min(first.year, today.year), 1, 1)
    last = date(max(last.year, today.year) + 1, 1, 1)
    label, span = 150, (last - first).days

    def x(day: date) -> float:
        return label + (width - label) * (day - first).days / span

    bars = []
    for n, a in enumerate(agreements):
        starts, ends = date.fromisoformat(a["starts_on"]), date.fromisoformat(a["ends_on"])
        if a["revoked"]:
            ends = min(ends, date.fromisoformat(a["revoked"]["on"]))
        bars.append(
            {
                "y": 24 + n * row,
                "x": round(x(starts), 1),
                "width": round(max(x(ends) - x(starts), 2), 1),
                "label": a["agreement"],
                "status": a["status"],
                "title": f"{a['agreement']}: {a['title']} ({a['starts_on']} to {a['ends_on']}, "
                f"{a['status']})",
            }
        )
    years = [
        {"x": round(x(date(year, 1, 1)), 1), "label": year} for year in range(first.year, last.year)
    ]
    return {
        "bars": bars,
        "height": 24 + len(agreements) * row + 8,
        "width": width,
        "today": round(x(today), 1),
        "years": years,
    }


def status(agreement: Agreement, at: datetime) -> str:
    why_not = in_force(agreement, at)
    if why_not is None:
        return "active"
    if agreement.revoked_at is not None:
        return "revoked"
    return "not yet started" if why_not.startswith("it starts") else "expired"


def entry(session: Session, agreement: Agreement, at: datetime | None = None) -> dict[str, Any]:
    """One agreement's entry, exactly as the register publishes it."""
    return _agreement(session, agreement, at or now())


def _agreement(session: Session, agreement: Agreement, at: datetime) -> dict[str, Any]:
    app = agreement.application
    decision = session.get(Decision, app.id)
    assert decision is not None  # an agreement exists only for an approved application
    return {
        "agreement": agreement.reference,
        "application": app.reference,
        "title": app.title,
        "status": status(agreement, at),
        **_about(app),
        "data_items": [
            {"table": i.table_name, "field": i.field_name, "justification": i.justification}
            for i in app.items
        ],
        "data_from": agreement.scope["data_from"],
        "data_to": agreement.scope["data_to"],
        "population": agreement.scope["population"],
        "national_data_opt_out": agreement.scope["national_data_opt_out"],
        "type1_opt_out": "applied: the records of people with a Type 1 opt-out are erased",
        "starts_on": agreement.starts_on.isoformat(),
        "ends_on": agreement.ends_on.isoformat(),
        "revoked": (
            {"on": f"{agreement.revoked_at:%Y-%m-%d}", "reason": agreement.revoked_reason}
            if agreement.revoked_at
            else None
        ),
        "conditions": list(agreement.conditions),
        "decision": _decision(session, app, decision),
        "releases": [_release(session, r) for r in agreement.releases],
    }


def _refused(session: Session, app: Application) -> dict[str, Any]:
    decision = session.get(Decision, app.id)
    return {
        "application": app.reference,
        "title": app.title,
        **_about(app),
        "refused_by": "the review panel" if decision else "the automatic checks",
        "reason": app.outcome_reason,
        "decision": _decision(session, app, decision) if decision else None,
        "submitted_on": f"{app.submitted_at:%Y-%m-%d}" if app.submitted_at else None,
    }


def _about(app: Application) -> dict[str, Any]:
    return {
        "organisations": [
            {
                "name": o.organisation.name,
                "kind": ORGANISATION_KINDS[o.organisation.kind],
                "role": o.role,
            }
            for o in app.organisations
        ],
        "purpose": PURPOSES.get(app.purpose_category, app.purpose_category),
        "lay_summary": app.lay_summary,
        "expected_benefit": app.expected_benefit,
        "legal_basis": LEGAL_BASES.get(app.legal_basis, app.legal_basis),
        "commercial": app.commercial,
        "commercial_benefit": app.commercial_benefit,
        "state": STATES[app.state],
    }


def _decision(session: Session, app: Application, decision: Decision) -> dict[str, Any]:
    voters = session.scalars(
        sa.select(Person.name)
        .join(Vote, Vote.person_id == Person.id)
        .where(Vote.application_id == app.id)
        .order_by(Person.name)
    )
    conflicts = session.scalars(
        sa.select(Conflict).where(Conflict.application_id == app.id).order_by(Conflict.person_id)
    )
    return {
        "outcome": decision.outcome,
        "decided_on": f"{decision.decided_at:%Y-%m-%d}",
        "votes_for": decision.votes_for,
        "votes_against": decision.votes_against,
        "quorum": decision.quorum,
        "members_voting": list(voters),
        "conflicts_declared": [{"member": c.person.name, "reason": c.reason} for c in conflicts],
        "minutes": decision.minutes,
        "conditions": list(decision.conditions),
    }


def _release(session: Session, release: Release) -> dict[str, Any]:
    names = {
        p.id: p.name
        for p in session.scalars(
            sa.select(Person).where(
                Person.id.in_([release.first_checker_id, release.second_checker_id])
            )
        )
    }
    checked_by = [names[release.first_checker_id], names[release.second_checker_id]]
    approvals = session.execute(
        sa.select(RequestFile.name, Person.name)
        .join(ReleaseRequest, ReleaseRequest.id == RequestFile.request_id)
        .join(FileReview, FileReview.file_id == RequestFile.id)
        .join(Person, Person.id == FileReview.checker_id)
        .where(ReleaseRequest.release_id == release.id, FileReview.decision == "approve")
        .order_by(FileReview.at, FileReview.id)
    )
    per_file: dict[str, list[str]] = {}
    for file_name, checker in approvals:
        per_file.setdefault(file_name, []).append(checker)
    folder = release_folder(release.id)
    return {
        "title": release.title,
        "description": release.description,
        "released_on": f"{release.released_at:%Y-%m-%d}",
        "code_sha256": release.code_sha256,
        "files": release.files,
        "checked_by": checked_by,
        "run": release.run_reference,
        "lake_version": release.lake_version,
        "definition": (
            {"sha256": release.code_sha256, "href": f"{folder}/{DEFINITION_FILE}"}
            if release.definition is not None
            else None
        ),
        "published": [
            {
                "name": name,
                "sha256": sha256,
                "href": f"{folder}/{quote(name, safe='')}",
                "checked_by": per_file.get(name, checked_by),
            }
            for name, sha256 in sorted(release.files.items())
        ],
    }
