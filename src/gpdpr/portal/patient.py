"""Patients: sign in through the identity provider (NHS login's stand-in), see their opt-outs,
set or withdraw either at any time, and see which approved projects used their record.

The NHS number arrives in the verified ID token and goes straight to the custodian, which answers
with the lake pseudonym; only the pseudonym is kept, in the server-side session. The registry,
the event record and everything else see the pseudonym (the public record its hash), as with
`gpdpr optout set`.

The identity provider's pages are here too, under /idp/: in a deployment they are NHS login's.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from gpdpr.errors import UserError
from gpdpr.optout.registry import KINDS
from gpdpr.portal.idp import CALLBACK, CLIENT_ID, IdentityProvider, s256, verify_id_token
from gpdpr.portal.pages import page_error, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import (
    PATIENT,
    PUBLIC,
    GuardedRoute,
    allow,
    client_address,
    current,
    ensure_session,
    replace_session,
)

router = APIRouter(route_class=GuardedRoute)

NAMES = {"type1": "Type 1 opt-out", "ndoo": "National Data Opt-out"}
ACTIONS = ("set", "withdraw")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

LOG = logging.getLogger("gpdpr.portal")


def idp_of(request: Request) -> IdentityProvider:
    found: IdentityProvider = request.app.state.idp
    return found


def callback_uri(request: Request) -> str:
    return str(request.base_url).rstrip("/") + CALLBACK


@router.get("/patient/sign-in")
@allow(PUBLIC)
def patient_sign_in(request: Request) -> Response:
    """Start the authorization code flow: state, nonce and a PKCE verifier kept server-side."""
    session = ensure_session(request)
    verifier = secrets.token_urlsafe(48)
    session.pending = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": verifier,
    }
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": callback_uri(request),
            "scope": "openid profile nhs_number",
            "state": session.pending["state"],
            "nonce": session.pending["nonce"],
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        }
    )
    return RedirectResponse(f"/idp/authorize?{query}", status_code=303)


@router.get(CALLBACK)
@allow(PUBLIC)
def patient_callback(request: Request, code: str = "", state: str = "") -> Response:
    session = current(request)
    pending = session.pending if session else {}
    if not pending or not code or not secrets.compare_digest(state, pending.get("state", "")):
        return page_error(
            request,
            400,
            "This sign-in did not start here or has already been used. Sign in again.",
        )
    assert session is not None
    session.pending = {}
    try:
        token = idp_of(request).exchange(
            code, CLIENT_ID, callback_uri(request), pending["verifier"]
        )
        claims = verify_id_token(token, idp_of(request).jwks(), pending["nonce"])
        portal = portal_of(request)
        with portal.writing():
            pseudonym = portal.custodian.pseudonym_for(
                str(claims["nhs_number"]), actor="portal", purpose="patient sign-in"
            )
    except UserError as exc:
        return page_error(request, 400, str(exc))
    fresh = request.app.state.sessions.rotate(session)
    fresh.roles = frozenset({PATIENT})
    fresh.pseudonym = pseudonym
    replace_session(request, fresh)
    return RedirectResponse("/patient", status_code=303)


@router.get("/patient")
@allow(PATIENT)
def patient_home(request: Request) -> Response:
    session = current(request)
    assert session is not None and session.pseudonym is not None
    from gpdpr.portal.timeline import erasures_of

    portal = portal_of(request)
    status = portal.registry.status(session.pseudonym)
    return render(
        request,
        "patient.html.j2",
        status=status,
        names=NAMES,
        erased=_erased_since(status, erasures_of(portal.engine, session.pseudonym)),
        request_id=new_request_id(),
    )


def new_request_id() -> str:
    """A new id for one opt-out form: sent twice (a double click, a resend), it is recorded
    once."""
    return secrets.token_urlsafe(24)


def _erased_since(status: dict[str, Any], erasures: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The receipt of the erasure that carried out the Type 1 opt-out now set, if one has run."""
    type1 = status["type1"]
    if type1["state"] != "set" or not erasures:
        return None
    from gpdpr.db.models import as_utc

    since = as_utc(type1["since"])
    done = [e for e in erasures if e["erased_at"] >= since]
    return done[-1] if done else None


@router.get("/patient/record")
@allow(PATIENT)
def patient_record(request: Request, page: int = 1) -> Response:
    """The approved projects whose runs read this patient's record, each with its register
    entry. Worked out on request from the person's pseudonym (the custodian's tokens), so
    nothing anyone else can read links a project to them."""
    from gpdpr.portal.timeline import page_of, timeline
    from gpdpr.transparency.patient import record_uses
    from gpdpr.transparency.uses import UsesDamaged

    session = current(request)
    assert session is not None and session.pseudonym is not None
    portal = portal_of(request)
    try:
        uses = record_uses(portal.custodian, session.pseudonym, portal.home)
    except UsesDamaged as damaged:
        # The operators are told where and what (the file's path); the patient is told that
        # the page cannot be trusted now, not a path on the service's machine.
        LOG.error("patient record page: %s", damaged)
        return page_error(
            request,
            503,
            "Which projects used your record cannot be shown just now: one of the service's "
            "records of research runs is damaged, and a page that left a project out would "
            "not be true. The service's operators have been told. Please try again later.",
        )
    asked = questions(portal, uses)
    told = timeline(portal.engine, session.pseudonym, uses, asked)
    return render(
        request,
        "patient_record.html.j2",
        uses=uses,
        names=NAMES,
        timeline=told,
        shown=page_of(told.moments, page),
        questions=asked,
    )


def questions(portal: Any, uses: Any) -> dict[str, str]:
    """Each definition the person's runs used, as its question in words (where it can be read)."""
    import sqlalchemy as sa

    from gpdpr.tre.models import Run
    from gpdpr.tre.query.text import question_of

    shas = {run.definition_sha256 for p in uses.projects for run in p.runs}
    if not shas:
        return {}
    found = portal.read(
        lambda s: dict(
            s.execute(
                sa.select(Run.definition_sha256, Run.definition)
                .where(Run.definition_sha256.in_(shas))
                .distinct()
            ).all()
        )
    )
    return {sha: words for sha, text in found.items() if (words := question_of(text))}


@router.post("/patient/opt-out")
@allow(PATIENT)
def patient_change(
    request: Request,
    kind: str = Form(""),
    action: str = Form(""),
    request_id: str = Form(""),
) -> Response:
    session = current(request)
    assert session is not None and session.pseudonym is not None
    # The page's form always sends an id; a request without one (a script) is still recorded
    # only if it changes the person's state.
    well_formed = not request_id or REQUEST_ID.match(request_id)
    if kind not in KINDS or action not in ACTIONS or not well_formed:
        portal = portal_of(request)
        return render(
            request,
            "patient.html.j2",
            status_code=400,
            status=portal.registry.status(session.pseudonym),
            names=NAMES,
            request_id=new_request_id(),
            errors=["Choose which opt-out, and whether to set or withdraw it."],
        )
    portal = portal_of(request)
    with portal.writing():
        change = portal.registry.set if action == "set" else portal.registry.withdraw
        changed = change(session.pseudonym, kind, "online", request_id=request_id or None)
    state = portal.registry.status(session.pseudonym)[kind]
    session.flash.append(_confirmation(kind, action, changed, state["since"]))
    return RedirectResponse("/patient#status", status_code=303)


def _confirmation(kind: str, action: str, changed: bool, since: object) -> str:
    name = NAMES[kind]
    if not changed:
        already = "set" if action == "set" else "not set"
        return f"Your {name} was already {already}: nothing changed."
    when = f"{since:%d %B %Y at %H:%M} UTC" if hasattr(since, "strftime") else "now"
    if action == "set" and kind == "type1":
        return (
            f"Your {name} is recorded ({when}). What happens next: your GP record will not be "
            "collected again, and everything already collected about you is erased at the next "
            "erasure cycle, with a deletion receipt in the public record."
        )
    if action == "set":
        return (
            f"Your {name} is recorded ({when}). What happens next: from now on your records are "
            "left out of every research and planning run, unless an approved project has a "
            "published legal exemption."
        )
    if kind == "type1":
        return (
            f"Your {name} is withdrawn ({when}). What happens next: your practice is asked to "
            "send your record again with its next extract."
        )
    return f"Your {name} is withdrawn ({when}). Your records may again be used in approved work."


# ---- the identity provider (NHS login's stand-in) ---------------------------------------------

AUTH_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)


@router.get("/idp/authorize")
@allow(PUBLIC)
def idp_authorize(request: Request) -> Response:
    params = {k: request.query_params.get(k, "") for k in AUTH_PARAMS}
    problem = idp_of(request).check_request(params, callback_uri(request))
    if problem is not None:
        return page_error(request, 400, f"The sign-in request is not valid: {problem}.")
    return render(request, "idp_login.html.j2", params=params, email="")


@router.post("/idp/authorize")
@allow(PUBLIC)
async def idp_sign_in(request: Request) -> Response:
    form = await request.form()
    params = {k: str(form.get(k, "")) for k in AUTH_PARAMS}
    email, password = str(form.get("email", "")).strip(), str(form.get("password", ""))
    idp = idp_of(request)
    problem = idp.check_request(params, callback_uri(request))
    if problem is not None:
        return page_error(request, 400, f"The sign-in request is not valid: {problem}.")
    portal = portal_of(request)
    limit = portal.rate_limit
    keys = [("account", f"idp:{email.lower()}"), ("address", client_address(request))]
    from starlette.concurrency import run_in_threadpool

    wait = await run_in_threadpool(limit.attempt, portal.engine, keys)
    if wait:
        return render(
            request,
            "idp_login.html.j2",
            status_code=429,
            params=params,
            email=email,
            errors=[f"Too many failed attempts. Try again in {int(wait) // 60 + 1} minutes."],
        )
    if not email or not await run_in_threadpool(idp.check_password, email, password):
        return render(
            request,
            "idp_login.html.j2",
            status_code=400,
            params=params,
            email=email,
            errors=["The email address or password is not right."],
        )
    await run_in_threadpool(limit.succeeded, portal.engine, keys)
    code = idp.issue_code(email, params)
    target = f"{params['redirect_uri']}?{urlencode({'code': code, 'state': params['state']})}"
    return RedirectResponse(target, status_code=303)


@router.get("/idp/jwks.json")
@allow(PUBLIC)
def idp_jwks(request: Request) -> Response:
    return JSONResponse(idp_of(request).jwks())
