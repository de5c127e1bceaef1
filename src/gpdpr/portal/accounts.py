"""Signing in and out, and the administrator's pages for organisations, people and passwords.

Staff (applicants, panel members, output checkers, administrators) sign in with their handle and
a password, hashed with argon2 in `portal_credentials`, and, once they have enrolled one, a code
from an authenticator app (TOTP, see `second_factors`). Attempts are rate-limited per account and
per client address; the answer to a wrong handle and to a wrong password is the same, and takes
as long. A password reset ends every session of that person.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gpdpr.db.events import record
from gpdpr.errors import UserError
from gpdpr.governance import people
from gpdpr.governance.models import Person, PersonRole
from gpdpr.governance.vocabulary import ORGANISATION_KINDS, ROLES
from gpdpr.portal import second_factors
from gpdpr.portal.idp import s256
from gpdpr.portal.models import Credential, SessionRow
from gpdpr.portal.pages import not_found, page_error, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import (
    PUBLIC,
    SIGNED_IN,
    STAFF_ROLES,
    GuardedRoute,
    Passwords,
    PortalSession,
    allow,
    client_address,
    current,
    ensure_session,
    replace_session,
    safe_next,
    sign_out,
    staff_session,
)
from gpdpr.portal.staff_oidc import OrganisationProvider

router = APIRouter(route_class=GuardedRoute)


def set_password(session: Session, passwords: Passwords, handle: str, password: str) -> None:
    """Give `handle` a password (replacing any they had), and end every session they have: a
    reset is how an administrator shuts out whoever may have learnt the old one."""
    who = people.person(session, handle)
    hashed = passwords.hash(password)
    found = session.get(Credential, who.id)
    if found is None:
        session.add(
            Credential(person_id=who.id, password_hash=hashed, changed_at=datetime.now(UTC))
        )
    else:
        found.password_hash = hashed
        found.changed_at = datetime.now(UTC)
    end_sessions(session, handle)


def end_sessions(session: Session, handle: str) -> None:
    """End every portal session of `handle`, in the caller's transaction (a password reset, a
    change of roles)."""
    session.execute(sa.delete(SessionRow).where(SessionRow.handle == handle))


def change_roles(
    session: Session, by: str, handle: str, add: Iterable[str], remove: Iterable[str]
) -> list[str]:
    """Give `handle` the roles in `add` and take those in `remove`, as administrator `by`; their
    sessions end (a session carries the roles it was signed in with), and the change is recorded
    as roles given (`governance.person`, published without who). The new roles."""
    people.acting(session, by, "administrator", "change people's roles")
    who = people.person(session, handle)
    adding, removing = set(add), set(remove)
    unknown = sorted((adding | removing) - set(ROLES))
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a role; the roles are {', '.join(ROLES)}")
    if adding & removing:
        raise UserError(f"{', '.join(sorted(adding & removing))}: both added and removed")
    before = set(who.roles)
    after = sorted((before | adding) - removing)
    if set(after) == before:
        raise UserError(
            f"{handle} already has roles {', '.join(sorted(before))}: nothing to change"
        )
    if "administrator" in before - set(after):
        others = session.scalar(
            sa.select(sa.func.count())
            .select_from(PersonRole)
            .where(PersonRole.role == "administrator", PersonRole.person_id != who.id)
        )
        if not others:
            raise UserError(f"{handle} is the only administrator: make another one first")
    if not after:
        raise UserError(f"{handle} would have no role left; give them another first")
    if "applicant" in after and who.organisation is None:
        raise UserError(f"{handle}: an applicant applies for an organisation, and they have none")
    who.role_rows = [PersonRole(role=r) for r in after]
    end_sessions(session, handle)
    record(
        session,
        "governance.person",
        by,
        {
            "handle": handle,
            "organisation": who.organisation.name if who.organisation else None,
            "roles": after,
            "added": sorted(set(after) - before),
            "removed": sorted(before - set(after)),
        },
    )
    return after


@dataclass(frozen=True)
class _Stored:
    password_hash: str | None
    roles: frozenset[str]
    totp_secret: str | None


def _stored(session: Session, handle: str) -> _Stored:
    who = session.scalar(sa.select(Person).where(Person.handle == handle))
    if who is None:
        return _Stored(None, frozenset(), None)
    found = session.get(Credential, who.id)
    return _Stored(
        found.password_hash if found else None,
        frozenset(who.roles),
        found.totp_secret if found else None,
    )


@router.get("/sign-in")
@allow(PUBLIC)
def sign_in_form(request: Request, next: str = "") -> Response:
    ensure_session(request)
    return render(request, "sign_in.html.j2", handle="", next=safe_next(next, ""))


def _organisation(request: Request) -> OrganisationProvider | None:
    found: OrganisationProvider | None = request.app.state.staff_oidc
    return found


def _organisation_callback(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/sign-in/organisation/callback"


@router.get("/sign-in/organisation")
@allow(PUBLIC)
def organisation_sign_in(request: Request, next: str = "") -> Response:
    """Start signing in at the organisation's OpenID Connect provider."""
    provider = _organisation(request)
    if provider is None:
        return not_found(request)
    session = ensure_session(request)
    verifier = secrets.token_urlsafe(48)
    session.pending = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": verifier,
        "next": safe_next(next, ""),
    }
    try:
        target = provider.authorize_url(
            _organisation_callback(request),
            session.pending["state"],
            session.pending["nonce"],
            s256(verifier),
        )
    except UserError as exc:
        return page_error(request, 502, str(exc))
    return RedirectResponse(target, status_code=303)


@router.get("/sign-in/organisation/callback")
@allow(PUBLIC)
def organisation_callback(request: Request, code: str = "", state: str = "") -> Response:
    provider = _organisation(request)
    session = current(request)
    pending = session.pending if session else {}
    if provider is None or session is None:
        return not_found(request)
    if (
        not pending.get("verifier")
        or not code
        or not secrets.compare_digest(state, pending.get("state", ""))
    ):
        return page_error(
            request, 400, "This sign-in did not start here or has already been used. Sign in again."
        )
    session.pending = {}
    portal = portal_of(request)
    try:
        token = provider.exchange(code, _organisation_callback(request), pending["verifier"])
        claims = provider.verify(token, pending["nonce"])
        handle, staff, factor = portal.read(lambda s: _by_email(s, str(claims["email"])))
    except UserError as exc:
        return page_error(request, 400, str(exc))
    target = pending.get("next", "")
    if factor:
        session.pending = {"second_factor": handle, "next": target}
        return RedirectResponse("/sign-in/code", status_code=303)
    if second_factors.must_enrol(staff, factor):
        return _to_enrol(session, handle, target)
    _signed_in(request, handle, staff)
    return RedirectResponse(target or _landing(staff), status_code=303)


def _by_email(session: Session, email: str) -> tuple[str, frozenset[str], bool]:
    """The one staff member with this email address: handle, staff roles, whether they have a
    second factor; a UserError if there is none, or more than one."""
    found = [
        p
        for p in session.scalars(
            sa.select(Person).where(sa.func.lower(Person.email) == email.strip().lower())
        )
        if p.roles & set(STAFF_ROLES)
    ]
    if len(found) != 1:
        raise UserError(
            "no staff account here has the email address your organisation gave"
            if not found
            else "more than one staff account has that email address: sign in with your handle"
        )
    stored = _stored(session, found[0].handle)
    return found[0].handle, stored.roles & frozenset(STAFF_ROLES), stored.totp_secret is not None


@router.post("/sign-in")
@allow(PUBLIC)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    handle = str(form.get("handle", "")).strip().lower()
    password = str(form.get("password", ""))
    target = safe_next(str(form.get("next", "")), "")
    portal = portal_of(request)
    keys = [("account", handle), ("address", client_address(request))]
    # Counted before the (deliberately slow) hash is checked: guesses sent together are
    # counted one after another, and those past the limit are never checked.
    wait = await run_in_threadpool(portal.rate_limit.attempt, portal.engine, keys)
    if wait:
        return _too_many(request, handle, target, wait)
    stored = await run_in_threadpool(portal.read, lambda s: _stored(s, handle))
    good = await run_in_threadpool(portal.passwords.verify, stored.password_hash, password)
    staff = stored.roles & frozenset(STAFF_ROLES)
    if not handle or not good or not staff:
        return render(
            request,
            "sign_in.html.j2",
            status_code=400,
            handle=handle,
            next=target,
            errors=["The handle or password is not right."],
        )
    await run_in_threadpool(portal.rate_limit.succeeded, portal.engine, keys)
    session = ensure_session(request)
    if stored.totp_secret is not None:
        # Half signed in: the password was right; the code from their app is asked next.
        session.pending = {"second_factor": handle, "next": target}
        return RedirectResponse("/sign-in/code", status_code=303)
    if second_factors.must_enrol(staff, False):
        return _to_enrol(session, handle, target)
    _signed_in(request, handle, staff)
    return RedirectResponse(target or _landing(staff), status_code=303)


def _to_enrol(session: PortalSession, handle: str, target: str) -> Response:
    """Half signed in: the person's role needs a second factor and they have none, so they set
    one up before anything else (nothing else is theirs until they have)."""
    session.pending = {"enrol": handle, "next": target}
    return RedirectResponse("/sign-in/second-factor", status_code=303)


@router.get("/sign-in/second-factor")
@allow(PUBLIC)
def required_enrol_form(request: Request) -> Response:
    session = current(request)
    handle = session.pending.get("enrol") if session else None
    if session is None or handle is None:
        return RedirectResponse("/sign-in", status_code=303)
    secret = second_factors.new_secret()
    session.pending = {**session.pending, "totp_secret": secret}
    return render(
        request,
        "second_factor.html.j2",
        secret=secret,
        uri=second_factors.uri(secret, handle),
        action="/sign-in/second-factor",
        required=True,
    )


@router.post("/sign-in/second-factor")
@allow(PUBLIC)
async def required_enrol(request: Request) -> Response:
    """The enrolment a role requires, finished: the code made with the new key, counted against
    the sign-in limits; then the person is signed in."""
    form = await request.form()
    code = str(form.get("code", "")).strip().replace(" ", "")
    session = current(request)
    handle = session.pending.get("enrol") if session else None
    secret = session.pending.get("totp_secret") if session else None
    if session is None or handle is None:
        return RedirectResponse("/sign-in", status_code=303)
    if secret is None:
        return RedirectResponse("/sign-in/second-factor", status_code=303)
    portal = portal_of(request)
    keys = [("account", handle), ("address", client_address(request))]
    wait = await run_in_threadpool(portal.rate_limit.attempt, portal.engine, keys)
    if wait:
        session.pending = {}
        return _too_many(request, handle, "", wait)
    done = await run_in_threadpool(
        portal.act, lambda s: second_factors.enrol(s, handle, secret, code)
    )
    if not done:
        return _wrong_code(request, secret, handle, action="/sign-in/second-factor", required=True)
    await run_in_threadpool(portal.rate_limit.succeeded, portal.engine, keys)
    target = session.pending.get("next", "")
    stored = await run_in_threadpool(portal.read, lambda s: _stored(s, handle))
    staff = stored.roles & frozenset(STAFF_ROLES)
    _signed_in(request, handle, staff)
    fresh = current(request)
    if fresh is not None:
        fresh.flash.append("Your second factor is set up: sign-ins now ask for its code.")
    return RedirectResponse(target or _landing(staff), status_code=303)


def _too_many(request: Request, handle: str, target: str, wait: float) -> Response:
    return render(
        request,
        "sign_in.html.j2",
        status_code=429,
        handle=handle,
        next=target,
        errors=[
            f"Too many failed sign-ins. Try again in {int(wait) // 60 + 1} minutes, or ask "
            "an administrator to reset your password."
        ],
    )


def _signed_in(request: Request, handle: str, staff: frozenset[str]) -> None:
    session = ensure_session(request)
    fresh = request.app.state.sessions.rotate(session)
    fresh.handle = handle
    fresh.roles = staff
    replace_session(request, fresh)


@router.get("/sign-in/code")
@allow(PUBLIC)
def second_factor_form(request: Request) -> Response:
    session = current(request)
    if session is None or "second_factor" not in session.pending:
        return RedirectResponse("/sign-in", status_code=303)
    return render(request, "sign_in_code.html.j2")


@router.post("/sign-in/code")
@allow(PUBLIC)
async def second_factor(request: Request) -> Response:
    """The second step of a staff sign-in: the code from the person's authenticator app,
    counted against the same limits as passwords."""
    form = await request.form()
    code = str(form.get("code", "")).strip().replace(" ", "")
    session = current(request)
    handle = session.pending.get("second_factor") if session else None
    if session is None or handle is None:
        return RedirectResponse("/sign-in", status_code=303)
    portal = portal_of(request)
    keys = [("account", handle), ("address", client_address(request))]
    wait = await run_in_threadpool(portal.rate_limit.attempt, portal.engine, keys)
    if wait:
        session.pending = {}
        return _too_many(request, handle, "", wait)
    accepted = await run_in_threadpool(portal.act, lambda s: second_factors.accept(s, handle, code))
    if not accepted:
        return render(
            request,
            "sign_in_code.html.j2",
            status_code=400,
            errors=["That code is not right. Enter the code your authenticator app shows now."],
        )
    await run_in_threadpool(portal.rate_limit.succeeded, portal.engine, keys)
    target = session.pending.get("next", "")
    stored = await run_in_threadpool(portal.read, lambda s: _stored(s, handle))
    staff = stored.roles & frozenset(STAFF_ROLES)
    _signed_in(request, handle, staff)
    return RedirectResponse(target or _landing(staff), status_code=303)


@router.get("/account/second-factor")
@allow(*STAFF_ROLES)
def enrol_form(request: Request) -> Response:
    """Enrolment: a new secret shown once (as text and as an otpauth:// address for the app);
    it is kept only when a code made with it is entered."""
    session = staff_session(request)
    secret = second_factors.new_secret()
    session.pending = {"totp_secret": secret}
    return render(
        request,
        "second_factor.html.j2",
        secret=secret,
        uri=second_factors.uri(secret, session.handle or ""),
    )


def _wrong_code(request: Request, secret: str, handle: str, **page: object) -> Response:
    """The enrolment page again, saying the code was wrong (at sign-in, or from the account)."""
    return render(
        request,
        "second_factor.html.j2",
        status_code=400,
        secret=secret,
        uri=second_factors.uri(secret, handle),
        errors=["That code is not right: enter the code the app shows for this key now."],
        **page,
    )


@router.post("/account/second-factor")
@allow(*STAFF_ROLES)
async def enrol(request: Request) -> Response:
    form = await request.form()
    code = str(form.get("code", "")).strip().replace(" ", "")
    session = staff_session(request)
    secret = session.pending.get("totp_secret")
    handle = session.handle or ""
    if secret is None:
        return RedirectResponse("/account/second-factor", status_code=303)
    portal = portal_of(request)
    done = await run_in_threadpool(
        portal.act, lambda s: second_factors.enrol(s, handle, secret, code)
    )
    if not done:
        return _wrong_code(request, secret, handle)
    session.pending = {}
    session.flash.append("Your second factor is set up: sign-ins now ask for its code.")
    return RedirectResponse("/", status_code=303)


def _landing(roles: frozenset[str]) -> str:
    for role, page in (
        ("administrator", "/panel"),
        ("panel_member", "/panel"),
        ("output_checker", "/checking"),
        ("applicant", "/applications"),
    ):
        if role in roles:
            return page
    return "/"


@router.post("/sign-out")
@allow(*SIGNED_IN)
def sign_out_now(request: Request) -> Response:
    sign_out(request)
    return RedirectResponse("/", status_code=303)


# ---- administration ----------------------------------------------------------------------------


def _admin_page(request: Request, status_code: int = 200, **extra: object) -> Response:
    portal = portal_of(request)
    listed = portal.read(
        lambda s: (
            [
                (p.handle, p.name, p.organisation.name if p.organisation else "", sorted(p.roles))
                for p in people.people(s)
            ],
            [(o.name, ORGANISATION_KINDS[o.kind]) for o in people.organisations(s)],
        )
    )
    return render(
        request,
        "admin.html.j2",
        status_code=status_code,
        people=listed[0],
        organisations=listed[1],
        kinds=ORGANISATION_KINDS,
        roles=ROLES,
        **extra,
    )


@router.get("/admin")
@allow("administrator")
def admin(request: Request) -> Response:
    return _admin_page(request)


@router.post("/admin/organisations")
@allow("administrator")
async def add_organisation(request: Request) -> Response:
    form = await request.form()
    name, kind = str(form.get("name", "")), str(form.get("kind", ""))
    session = current(request)
    assert session is not None and session.handle is not None
    by = session.handle
    try:
        await run_in_threadpool(
            portal_of(request).act, lambda s: people.add_organisation(s, by, name, kind)
        )
    except UserError as exc:
        return _admin_page(request, 400, errors=[str(exc)], org_form={"name": name, "kind": kind})
    session.flash.append(f"Organisation {name.strip()} added.")
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/people")
@allow("administrator")
async def add_person(request: Request) -> Response:
    form = await request.form()
    values = {k: str(form.get(k, "")).strip() for k in ("handle", "name", "email", "organisation")}
    roles = [str(r) for r in form.getlist("roles")]
    password = str(form.get("password", ""))
    session = current(request)
    assert session is not None and session.handle is not None
    by = session.handle
    portal = portal_of(request)

    def add(s: Session) -> None:
        people.add_person(
            s,
            by,
            values["handle"],
            values["name"],
            values["email"],
            values["organisation"] or None,
            roles,
        )
        s.flush()
        set_password(s, portal.passwords, values["handle"], password)

    try:
        await run_in_threadpool(portal.act, add)
    except UserError as exc:
        return _admin_page(request, 400, errors=[str(exc)], person_form={**values, "roles": roles})
    session.flash.append(f"{values['handle']} added, with the password you chose.")
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/passwords")
@allow("administrator")
async def reset_password(request: Request) -> Response:
    form = await request.form()
    handle, password = str(form.get("handle", "")).strip(), str(form.get("password", ""))
    portal = portal_of(request)
    try:
        await run_in_threadpool(
            portal.act, lambda s: set_password(s, portal.passwords, handle, password)
        )
    except UserError as exc:
        return _admin_page(request, 400, errors=[str(exc)])
    session = current(request)
    assert session is not None
    session.flash.append(f"{handle}'s password is changed.")
    return RedirectResponse("/admin", status_code=303)
