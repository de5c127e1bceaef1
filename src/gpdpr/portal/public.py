"""The public pages: no sign-in. What is collected (rendered from the data specification, the one
source of truth), the limits and safeguards, the Data Uses Register with search and filters, the
statistics as charts, and how to opt out."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from gpdpr.governance import register
from gpdpr.governance.models import Application, Decision, Release
from gpdpr.governance.vocabulary import (
    CATEGORIES,
    DEFAULT_QUORUM,
    EXCLUDED_PURPOSES,
    LEGAL_BASES,
    NDOO_EXEMPTIONS,
    PURPOSES,
)
from gpdpr.portal import charts, register_view
from gpdpr.portal.pages import not_found, render
from gpdpr.portal.security import PUBLIC, GuardedRoute, allow
from gpdpr.portal.service import Portal
from gpdpr.spec import shipped

router = APIRouter(route_class=GuardedRoute)
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def portal_of(request: Request) -> Portal:
    found: Portal = request.app.state.portal
    return found


@router.get("/")
@allow(PUBLIC)
def home(request: Request) -> Response:
    return render(request, "home.html.j2", spec=shipped())


@router.get("/what-we-collect")
@allow(PUBLIC)
def what_we_collect(request: Request) -> Response:
    spec = shipped()
    return render(
        request,
        "collect.html.j2",
        spec=spec,
        coarsening=spec.raw.get("coarsening", {}),
        retention=spec.raw.get("retention", {}),
        pseudonymisation=spec.raw.get("pseudonymisation", {}),
        type1=spec.raw.get("type1_opt_out", {}),
        planned=spec.raw.get("planned", {}),
    )


@router.get("/safeguards")
@allow(PUBLIC)
def safeguards(request: Request) -> Response:
    from gpdpr.tre.release import disclosure

    return render(
        request,
        "safeguards.html.j2",
        excluded=EXCLUDED_PURPOSES,
        purposes=PURPOSES,
        legal_bases=LEGAL_BASES,
        exemptions=NDOO_EXEMPTIONS,
        quorum=DEFAULT_QUORUM,
        **disclosure.rules(),
    )


@router.get("/opting-out")
@allow(PUBLIC)
def opting_out(request: Request) -> Response:
    return render(request, "opting_out.html.j2", spec=shipped())


# ---- the register ------------------------------------------------------------------------------


STATUSES = {"active": "In force", "expired": "Ended", "revoked": "Revoked", "refused": "Refused"}


def _matches(entry: dict[str, Any], words: list[str]) -> bool:
    text = " ".join(
        [
            entry.get("agreement", ""),
            entry["application"],
            entry["title"],
            entry["lay_summary"],
            entry["purpose"],
            *(o["name"] for o in entry["organisations"]),
        ]
    ).lower()
    return all(w in text for w in words)


@router.get("/register")
@allow(PUBLIC)
def data_uses_register(
    request: Request,
    q: str = "",
    purpose: str = "",
    status: str = "",
    commercial: str = "",
) -> Response:
    built = portal_of(request).read(lambda s: register.build(s))
    words = q.lower().split()[:10]
    purpose_name = PURPOSES.get(purpose, "")
    agreements = [
        a
        for a in built["agreements"]
        if _matches(a, words)
        and (not purpose_name or a["purpose"] == purpose_name)
        and (not status or a["status"] == status)
        and (not commercial or a["commercial"] == (commercial == "yes"))
    ]
    refused = [
        r
        for r in built["refused"]
        if status in ("", "refused")
        and _matches(r, words)
        and (not purpose_name or r["purpose"] == purpose_name)
        and (not commercial or r["commercial"] == (commercial == "yes"))
    ]
    portal = portal_of(request)
    content = register_view.body(
        built,
        register_view.PORTAL,
        portal.read(register_view.questions),
        register_view.measure_charts(portal.home / "register", built),
        agreements=agreements,
        refused=refused if status in ("", "refused") else [],
    )
    return render(
        request,
        "register.html.j2",
        content=content,
        q=q,
        purpose=purpose,
        status=status,
        commercial=commercial,
        purposes=PURPOSES,
        statuses=STATUSES,
    )


@router.get("/register.csv")
@allow(PUBLIC)
def register_csv(request: Request) -> Response:
    """The whole register, one row per agreement: the same records the page shows."""
    built = portal_of(request).read(lambda s: register.build(s))
    return Response(
        register.to_csv(built),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="data-uses-register.csv"'},
    )


@router.get("/register.json")
@allow(PUBLIC)
def register_json(request: Request) -> Response:
    built = portal_of(request).read(lambda s: register.build(s))
    return Response(
        orjson.dumps(built, option=orjson.OPT_INDENT_2),
        media_type="application/json",
        headers={"content-disposition": 'attachment; filename="data-uses-register.json"'},
    )


@router.get("/register/releases/{release_id}/definition.txt")
@allow(PUBLIC)
def definition_as_text(request: Request, release_id: int) -> Response:
    """A release's definition written as the query language, for reading: made from the
    definition.json published beside it (never from anything the researcher sent as text)."""
    from gpdpr.tre.query.serial import from_json

    if not 1 <= release_id < 2**31:
        return not_found(request)
    found = portal_of(request).read(
        lambda s: s.scalar(sa.select(Release.definition).where(Release.id == release_id))
    )
    if found is None:
        return not_found(request)
    text = register_view.readable(from_json(found))
    return Response(text, media_type="text/plain; charset=utf-8")


@router.get("/register/releases/{release_id}/{name}")
@allow(PUBLIC)
def published_file(request: Request, release_id: int, name: str) -> Response:
    """A released file (or its definition.json) as published on the register: only a file the
    release lists in the database, found by its name there (the request's text never becomes a
    path), and only with the SHA-256 it was released with. Anything else in the folder is not
    served."""
    portal = portal_of(request)
    if not 1 <= release_id < 2**31:  # an id the database could hold
        return not_found(request)

    def listed(session: Session) -> tuple[str, str] | None:
        release = session.get(Release, release_id)
        if release is None:
            return None
        files: dict[str, str] = {str(k): str(v) for k, v in release.files.items()}
        if release.definition is not None:
            files[register.DEFINITION_FILE] = release.code_sha256
        return next(((known, sha) for known, sha in files.items() if known == name), None)

    found = portal.read(listed)
    if found is None or not _FILE.match(found[0]):
        return not_found(request)
    known, sha256 = found
    path = portal.home / "register" / register.release_folder(release_id) / known
    try:
        body = path.read_bytes()
    except OSError:
        return not_found(request)
    if hashlib.sha256(body).hexdigest() != sha256:
        return not_found(request)  # changed since it was released: not what was checked
    kind = "application/json" if known.endswith(".json") else "text/csv"
    return Response(
        body, media_type=kind, headers={"content-disposition": f'attachment; filename="{known}"'}
    )


# ---- statistics --------------------------------------------------------------------------------


def _months(stamps: list[datetime], last: int = 24) -> list[str]:
    """The last `last` months up to now, oldest first, as YYYY-MM (or since the first stamp)."""
    today = datetime.now(UTC)
    months: list[str] = []
    year, month = today.year, today.month
    first = min(stamps).strftime("%Y-%m") if stamps else today.strftime("%Y-%m")
    for _ in range(last):
        months.append(f"{year:04d}-{month:02d}")
        if months[-1] <= first:
            break
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def statistics_of(session: Session, home: Path) -> dict[str, Any]:
    from gpdpr.db.models import OptOutEvent

    coverage = lake_coverage(home)
    rows = session.execute(
        sa.select(OptOutEvent.effective_at, OptOutEvent.kind, OptOutEvent.action)
    ).all()
    stamps = [r.effective_at for r in rows]
    months = _months(stamps)
    counts = Counter((f"{r.effective_at:%Y-%m}", r.kind, r.action) for r in rows)
    optouts = {
        "months": months,
        "series": [
            charts.Series(
                f"{'Type 1' if kind == 'type1' else 'National Data Opt-out'} {verb}",
                [counts[(m, kind, action)] for m in months],
            )
            for kind in ("type1", "ndoo")
            for action, verb in (("set", "set"), ("withdrawn", "withdrawn"))
        ],
    }
    decisions: dict[str, int] = {
        outcome: n
        for outcome, n in session.execute(
            sa.select(Decision.outcome, sa.func.count()).group_by(Decision.outcome)
        )
    }
    auto_refused = session.scalar(
        sa.select(sa.func.count())
        .select_from(Application)
        .outerjoin(Decision, Decision.application_id == Application.id)
        .where(Application.state == "refused", Decision.application_id.is_(None))
    )
    waiting = session.scalar(
        sa.select(sa.func.count())
        .select_from(Application)
        .where(Application.state.in_(("submitted", "under_review")))
    )
    applications = {
        "labels": ["Approved by the panel", "Refused by the panel", "Refused at once", "Awaiting"],
        "values": [
            decisions.get("approved", 0),
            decisions.get("refused", 0),
            auto_refused or 0,
            waiting or 0,
        ],
    }
    released = [r for (r,) in session.execute(sa.select(Release.released_at)).all()]
    release_months = _months(released, 12)
    per_month = Counter(f"{r:%Y-%m}" for r in released)
    releases = {"months": release_months, "values": [per_month[m] for m in release_months]}
    return {
        "coverage": coverage,
        "optouts": optouts,
        "applications": applications,
        "releases": releases,
        "categories": CATEGORIES,
    }


_coverage_cache: dict[tuple[str, int], dict[str, Any]] = {}


def lake_coverage(home: Path) -> dict[str, Any] | None:
    """Patients and practices in the lake's latest version (None before anything is
    collected); counted once per lake version."""
    from gpdpr.errors import UserError
    from gpdpr.lake import query
    from gpdpr.lake.store import Lake

    if not (home / "lake").exists():
        return None
    try:
        lake = Lake.open(home / "lake")
        version = lake.latest()
    except UserError:
        return None
    key = (str(home), version.number)
    if key not in _coverage_cache:
        con = query.connect(lake.snapshot(version.number))
        try:
            counted = con.execute(
                "select count(distinct patient), count(distinct practice) from patients"
            ).fetchone()
            patients, practices = counted if counted else (0, 0)
            regions = con.execute(
                "select coalesce(region_code, 'unknown'), count(distinct patient) from patients "
                "group by 1 order by 1"
            ).fetchall()
        finally:
            con.close()
        _coverage_cache[key] = {
            "patients": int(patients),
            "practices": int(practices),
            "version": version.number,
            "regions": [(str(r), int(n)) for r, n in regions],
        }
    return _coverage_cache[key]


@cache
def region_names() -> dict[str, str]:
    """ONS region code -> name, from the geography the specification's postcode lookup uses."""
    text = resources.files("gpdpr.synth.data").joinpath("geography.toml").read_text("utf-8")
    return {str(r["code"]): str(r["name"]) for r in tomllib.loads(text)["region"]}


def _bars(title: str, labels: list[str], series: list[charts.Series]) -> str:
    """A bar chart drawn wide and narrow (charts.both)."""
    return charts.both(lambda width: charts.bars(title, labels, series, width=width))


@router.get("/statistics")
@allow(PUBLIC)
def statistics(request: Request) -> Response:
    portal = portal_of(request)
    figures = portal.read(lambda s: statistics_of(s, portal.home))
    coverage = figures["coverage"]
    drawn = {
        "regions": _bars(
            "Patients covered, by region",
            [region_names().get(r, r) for r, _ in coverage["regions"]] if coverage else [],
            [charts.Series("Patients", [n for _, n in coverage["regions"]] if coverage else [])],
        ),
        "optouts": _bars(
            "Opt-outs set and withdrawn, by month",
            figures["optouts"]["months"],
            figures["optouts"]["series"],
        ),
        "applications": _bars(
            "Applications by outcome",
            figures["applications"]["labels"],
            [charts.Series("Applications", figures["applications"]["values"])],
        ),
        "releases": _bars(
            "Releases of results, by month",
            figures["releases"]["months"],
            [charts.Series("Releases", figures["releases"]["values"])],
        ),
    }
    regions = [(region_names().get(r, r), n) for r, n in coverage["regions"]] if coverage else []
    return render(request, "statistics.html.j2", figures=figures, drawn=drawn, regions=regions)
