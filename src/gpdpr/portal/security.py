"""The portal's security core: who may reach each route, server-side sessions, CSRF tokens,
password hashing and the sign-in rate limit.

**Deny by default.** Every route declares who may reach it with `@allow(...)`: `PUBLIC`, or one
or more roles. `GuardedRoute` (the class every route of the portal is made with) checks the
declaration on each request before the endpoint runs, and a route that declares nothing is
refused to everyone (a test also checks that every registered route declares a policy).

**Sessions** live on the server; the cookie carries only a random 256-bit id (HttpOnly,
SameSite=Lax, Secure when the portal is reached over TLS). The id changes at every sign-in (no
session fixation) and the session ends after 30 idle minutes or 8 hours, at sign-out, or when
the person's password is reset or their roles change. A patient's session holds their lake
pseudonym, never their NHS number. Sessions are kept in the central database (see `Sessions`):
a restart keeps them and several portal processes share them.

**CSRF.** Every state-changing request (POST) must carry the session's synchroniser token in
the `csrf_token` form field; a missing or wrong one is refused before the endpoint runs.

**Rate limit.** Failed sign-ins are counted per account and per client address, in the central
database, before the password is checked (see `RateLimit`). The client's address comes from
X-Forwarded-For only when the connection is from a configured trusted proxy.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse

from gpdpr.db.models import core
from gpdpr.db.transactions import immediate
from gpdpr.portal.models import Credential, SessionRow, SignInCounter
from gpdpr.portal.second_factors import required_roles

PUBLIC = "public"
PATIENT = "patient"
STAFF_ROLES = ("applicant", "panel_member", "output_checker", "administrator")
ROLES = (PATIENT, *STAFF_ROLES)
SIGNED_IN = ROLES  # any signed-in person (to sign out)

COOKIE = "gpdpr_session"
CSRF_FIELD = "csrf_token"
IDLE_SECONDS = 30 * 60
LIFETIME_SECONDS = 8 * 60 * 60

F = TypeVar("F", bound=Callable[..., Any])


def allow(*who: str) -> Callable[[F], F]:
    """Declare who may reach a route: PUBLIC, or some of ROLES."""
    unknown = [w for w in who if w != PUBLIC and w not in ROLES]
    if not who or unknown or (PUBLIC in who and len(who) > 1):
        raise ValueError(f"a route allows PUBLIC alone, or some of {ROLES} (got {who})")

    def mark(endpoint: F) -> F:
        endpoint.__gpdpr_policy__ = frozenset(who)  # type: ignore[attr-defined]
        return endpoint

    return mark


def policy_of(endpoint: Callable[..., Any]) -> frozenset[str] | None:
    return getattr(endpoint, "__gpdpr_policy__", None)


# ---- sessions ----------------------------------------------------------------------------------


@dataclass
class PortalSession:
    id: str
    csrf: str
    created: float
    seen: float
    handle: str | None = None  # staff: their governance handle
    roles: frozenset[str] = frozenset()
    pseudonym: str | None = None  # patient: their lake pseudonym, never the NHS number
    pending: dict[str, str] = field(default_factory=dict)  # an OIDC sign-in under way
    flash: list[str] = field(default_factory=list)
    stored: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def signed_in(self) -> bool:
        return bool(self.roles)

    def has(self, role: str) -> bool:
        return role in self.roles

    def state(self) -> tuple[Any, ...]:
        """What is saved of the session (to tell whether a request changed it)."""
        return (
            self.csrf,
            self.handle,
            sorted(self.roles),
            self.pseudonym,
            dict(self.pending),
            list(self.flash),
        )


def session_key(session_id: str) -> str:
    """How the database knows a session: the hash of its cookie value, never the value."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Server-side sessions by random id, in the central database (`portal_sessions`): a
    restarted portal keeps them, and every portal worker shares them. A request's session is
    read when it arrives and written back when it is answered, if it changed."""

    # How stale `seen` may be before a request writes it again: idle time is measured to this.
    SEEN_STEP = 60.0
    PURGE_EVERY = 60.0
    MAX_ANONYMOUS = 100_000

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._purged = 0.0

    def new(self) -> PortalSession:
        stamp = time.time()
        made = PortalSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), stamp, stamp)
        if stamp - self._purged > self.PURGE_EVERY:
            self._purged = stamp
            self.purge(stamp)
        with immediate(self.engine).begin() as connection:
            connection.execute(sa.insert(_SESSIONS).values(key=session_key(made.id), **_row(made)))
        made.stored = made.state()
        return made

    def get(self, session_id: str | None) -> PortalSession | None:
        if not session_id or len(session_id) > 100:
            return None
        stamp = time.time()
        key = session_key(session_id)
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(_SESSIONS).where(_SESSIONS.c.key == key)).first()
            roles_now = (
                None if row is None or row.handle is None else _staff_roles(connection, row.handle)
            )
            unguarded = (
                row is not None
                and roles_now is not None
                and bool(roles_now & required_roles())
                and not _has_second_factor(connection, row.handle)
            )
        if row is None:
            return None
        expired = stamp - row.seen > IDLE_SECONDS or stamp - row.created > LIFETIME_SECONDS
        # A staff session holds the roles its person had at sign-in; if those have changed
        # since (by any route: the portal, a command, the database), the session ends.
        if expired or (roles_now is not None and roles_now != frozenset(row.roles)):
            self._delete(_SESSIONS.c.key == key)
            return None
        if unguarded:
            # Their role has come to need a second factor (GPDPR_SECOND_FACTOR_ROLES changed)
            # and they signed in without one: half signed in from now on, as at a sign-in, so
            # that nothing but setting one up is theirs until they have.
            with immediate(self.engine).begin() as connection:
                connection.execute(
                    sa.update(_SESSIONS)
                    .where(_SESSIONS.c.key == key)
                    .values(handle=None, roles=[], pending={"enrol": row.handle, "next": ""})
                )
            return self.get(session_id)
        found = PortalSession(
            session_id,
            row.csrf,
            row.created,
            row.seen,
            row.handle,
            frozenset(row.roles),
            row.pseudonym,
            dict(row.pending),
            list(row.flash),
        )
        found.stored = found.state()
        if stamp - row.seen > self.SEEN_STEP:
            found.seen = stamp
            with immediate(self.engine).begin() as connection:
                connection.execute(
                    sa.update(_SESSIONS).where(_SESSIONS.c.key == key).values(seen=stamp)
                )
        return found

    def save(self, session: PortalSession) -> None:
        """Write back what a request changed (nothing if it changed nothing). A session ended
        meanwhile (signed out, or its password reset) stays ended."""
        if session.state() == session.stored:
            return
        with immediate(self.engine).begin() as connection:
            connection.execute(
                sa.update(_SESSIONS)
                .where(_SESSIONS.c.key == session_key(session.id))
                .values(**_row(session))
            )
        session.stored = session.state()

    def rotate(self, old: PortalSession) -> PortalSession:
        """A new id and token for a session whose privileges change (signing in)."""
        fresh = self.new()
        fresh.flash = list(old.flash)
        self.end(old)
        return fresh

    def end(self, session: PortalSession) -> None:
        self._delete(_SESSIONS.c.key == session_key(session.id))

    def end_for(self, handle: str) -> int:
        """End every session of this staff member (their password was reset, their roles
        changed); how many there were."""
        return self._delete(_SESSIONS.c.handle == handle)

    def purge(self, stamp: float | None = None) -> int:
        """Remove the sessions that have expired, and the least recently seen of those nobody
        signed in to beyond MAX_ANONYMOUS (every visit to a page with a form makes one, so a
        flood of visits could otherwise fill the table); how many."""
        stamp = time.time() if stamp is None else stamp
        removed = self._delete(
            (_SESSIONS.c.seen < stamp - IDLE_SECONDS)
            | (_SESSIONS.c.created < stamp - LIFETIME_SECONDS)
        )
        anonymous = _SESSIONS.c.handle.is_(None) & _SESSIONS.c.pseudonym.is_(None)
        cutoff = (
            sa.select(_SESSIONS.c.seen)
            .where(anonymous)
            .order_by(_SESSIONS.c.seen.desc())
            .offset(self.MAX_ANONYMOUS)
            .limit(1)
            .scalar_subquery()
        )
        return removed + self._delete(anonymous & (_SESSIONS.c.seen <= cutoff))

    def _delete(self, where: sa.ColumnElement[bool]) -> int:
        with immediate(self.engine).begin() as connection:
            return connection.execute(sa.delete(_SESSIONS).where(where)).rowcount


_SESSIONS = core(SessionRow)


def _staff_roles(connection: sa.Connection, handle: str) -> frozenset[str]:
    from gpdpr.governance.models import Person, PersonRole

    found = connection.execute(
        sa.select(PersonRole.role)
        .join(Person, Person.id == PersonRole.person_id)
        .where(Person.handle == handle)
    ).scalars()
    return frozenset(found) & frozenset(STAFF_ROLES)


def _has_second_factor(connection: sa.Connection, handle: str) -> bool:
    from gpdpr.governance.models import Person

    found = connection.execute(
        sa.select(Credential.totp_secret)
        .join(Person, Person.id == Credential.person_id)
        .where(Person.handle == handle)
    ).scalar()
    return found is not None


def _row(session: PortalSession) -> dict[str, Any]:
    return {
        "csrf": session.csrf,
        "created": session.created,
        "seen": session.seen,
        "handle": session.handle,
        "roles": sorted(session.roles),
        "pseudonym": session.pseudonym,
        "pending": dict(session.pending),
        "flash": list(session.flash),
    }


def current(request: Request) -> PortalSession | None:
    return getattr(request.state, "session", None)


def staff_session(request: Request) -> PortalSession:
    """The signed-in staff member's session, on a route whose guard admits only staff roles
    (so there is one, with a handle)."""
    found = current(request)
    assert found is not None and found.handle is not None
    return found


def ensure_session(request: Request) -> PortalSession:
    """The visitor's session, made (anonymous) if they have none: a form needs its token."""
    found = current(request)
    if found is None:
        found = request.app.state.sessions.new()
        request.state.session = found
        request.state.set_cookie = True
    return found


def replace_session(request: Request, fresh: PortalSession) -> None:
    request.state.session = fresh
    request.state.set_cookie = True


def sign_out(request: Request) -> None:
    found = current(request)
    if found is not None:
        request.app.state.sessions.end(found)
    request.state.session = None
    request.state.clear_cookie = True


def csrf_token(request: Request) -> str:
    return ensure_session(request).csrf


# ---- the guard ---------------------------------------------------------------------------------


class GuardedRoute(APIRoute):
    """A route whose policy is checked (and, on POST, its CSRF token) before its endpoint runs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = policy_of(self.endpoint)

        async def guarded(request: Request) -> Response:
            sessions: Sessions = request.app.state.sessions
            session = await run_in_threadpool(sessions.get, request.cookies.get(COOKIE))
            request.state.session = session
            request.state.set_cookie = False
            request.state.clear_cookie = session is None and COOKIE in request.cookies
            refusal = await _refusal(request, allowed, session)
            response = refusal if refusal is not None else await handler(request)
            kept = current(request)
            if kept is not None:
                await run_in_threadpool(sessions.save, kept)
            _cookie(request, response)
            return response

        return guarded


async def _refusal(
    request: Request, allowed: frozenset[str] | None, session: PortalSession | None
) -> Response | None:
    from gpdpr.portal.pages import page_error

    if allowed is None:  # no declared policy: nobody
        return page_error(request, 403, "This page is not open to anyone.")
    if PUBLIC not in allowed:
        if session is not None and not session.signed_in and "enrol" in session.pending:
            return _to_enrolment(request, session)
        if session is None or not session.signed_in:
            if request.method in ("GET", "HEAD"):
                target = "/patient/sign-in" if allowed == {PATIENT} else "/sign-in"
                return RedirectResponse(f"{target}?next={_local(request)}", status_code=303)
            return page_error(request, 401, "Sign in first.")
        if not (session.roles & allowed):
            return page_error(request, 403, "Your account does not give you access to this page.")
    if has_control_character(request.url.path):  # no page has such an address
        return page_error(request, 404, "There is nothing here, or nothing you can see.")
    where = _control_character("", request.query_params.multi_items())
    if where is None and request.method not in ("GET", "HEAD"):
        where = _control_character("", (await request.form()).multi_items())
    if where is not None:
        return page_error(
            request,
            400,
            f"{where} holds a control character (such as a NUL byte), which no field here "
            "takes, so nothing was done. Retype it without, and send it again.",
        )
    if request.method not in ("GET", "HEAD"):
        form = await request.form()
        sent = form.get(CSRF_FIELD)
        if (
            session is None
            or not isinstance(sent, str)
            or not hmac.compare_digest(sent.encode(), session.csrf.encode())
        ):
            return page_error(
                request,
                403,
                "This form has expired or did not come from this site, so nothing was done. "
                "Go back, reload the page and try again.",
            )
    return None


def _to_enrolment(request: Request, session: PortalSession) -> Response:
    """A person half signed in because their role needs a second factor they have not set up:
    to its enrolment (and back to this page after), and no further."""
    from gpdpr.portal.pages import page_error

    if request.method not in ("GET", "HEAD"):
        return page_error(
            request,
            403,
            "Your role now needs a second factor, so nothing was done. Set one up first: "
            "open any page and you will be taken there.",
        )
    if not session.pending.get("next"):
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        session.pending = {**session.pending, "next": safe_next(path, "")}
    return RedirectResponse("/sign-in/second-factor", status_code=303)


# Text may hold tabs and line breaks; no other C0 or C1 control character (NUL above all, which
# PostgreSQL cannot store in text and which ends strings elsewhere) is taken anywhere.
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def has_control_character(text: str) -> bool:
    return any((ch < " " or "\x7f" <= ch <= "\x9f") and ch not in _ALLOWED_CONTROLS for ch in text)


def _control_character(path: str, items: Iterable[tuple[str, Any]]) -> str | None:
    """Which part of a request holds a control character ("The address", "The field 'name'"),
    or None."""
    if has_control_character(path):
        return "The address"
    for name, value in items:
        if has_control_character(name) or (isinstance(value, str) and has_control_character(value)):
            shown = name if not has_control_character(name) else "?"
            return f"The field {shown!r}"
    return None


def _local(request: Request) -> str:
    from urllib.parse import quote

    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return quote(path, safe="")


def safe_next(target: str | None, default: str) -> str:
    """Only a path on this site (no scheme, no host, no //): never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def _cookie(request: Request, response: Response) -> None:
    session = current(request)
    secure = request.url.scheme == "https"
    if getattr(request.state, "set_cookie", False) and session is not None:
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=LIFETIME_SECONDS,
            httponly=True,
            samesite="lax",
            secure=secure,
            path="/",
        )
    elif getattr(request.state, "clear_cookie", False):
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure)
    if isinstance(response, HTMLResponse) or response.media_type == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")


# ---- passwords ---------------------------------------------------------------------------------


class Passwords:
    """argon2id hashes (argon2-cffi's recommended parameters unless told otherwise)."""

    MIN_LENGTH = 10

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        # Checked against when there is no such account, so a wrong handle takes as long.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        if len(password) < self.MIN_LENGTH:
            from gpdpr.errors import UserError

            raise UserError(f"a password needs at least {self.MIN_LENGTH} characters")
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._decoy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


# ---- rate limit --------------------------------------------------------------------------------


class RateLimit:
    """Sign-in attempts per key (an account, a client address), counted in the central database
    (`portal_sign_in_counters`, shared by every portal worker) over a window that starts at the
    first attempt counted.

    An attempt is counted *before* its password is checked, in one atomic step per key (an
    UPDATE ... RETURNING of the counter, which the database applies one at a time), and refused
    if that makes too many: so however many guesses arrive together, at most the limit are ever
    checked. An attempt that succeeds, or is refused, is taken off the count again, so the count
    is of failed sign-ins."""

    def __init__(self, per_account: int = 5, per_address: int = 20, window: float = 900) -> None:
        self.limits = {"account": per_account, "address": per_address}
        self.window = window

    def attempt(self, engine: sa.Engine, keys: Iterable[tuple[str, str]]) -> float:
        """Count an attempt against each of `keys` (kind, value); 0 if it may go ahead, else the
        seconds until it may (and nothing is counted)."""
        ordered = sorted(set(keys))  # the same order everywhere: no two attempts deadlock
        stamp = time.time()
        wait = 0.0
        with immediate(engine).begin() as connection:
            for kind, value in ordered:
                count, since = self._count(connection, f"{kind}:{value}", stamp, 1)
                if count > self.limits[kind]:
                    wait = max(wait, since + self.window - stamp, 1.0)
        if wait:
            self.succeeded(engine, ordered)
        return wait

    def succeeded(self, engine: sa.Engine, keys: Iterable[tuple[str, str]]) -> None:
        """Take back an attempt counted by `attempt` (it succeeded, or was refused unchecked)."""
        with immediate(engine).begin() as connection:
            for kind, value in sorted(set(keys)):
                connection.execute(
                    sa.update(_COUNTERS)
                    .where(_COUNTERS.c.key == f"{kind}:{value}", _COUNTERS.c.count > 0)
                    .values(count=_COUNTERS.c.count - 1)
                )

    def clear(self, engine: sa.Engine) -> None:
        """Forget every count (an operator's reset, and between tests)."""
        with immediate(engine).begin() as connection:
            connection.execute(sa.delete(_COUNTERS))

    def _count(
        self, connection: sa.Connection, key: str, stamp: float, by: int
    ) -> tuple[int, float]:
        insert = _upsert(connection)(_COUNTERS).values(key=key[:300], since=stamp, count=0)
        connection.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
        stale = _COUNTERS.c.since <= stamp - self.window
        row = connection.execute(
            sa.update(_COUNTERS)
            .where(_COUNTERS.c.key == key[:300])
            .values(
                count=sa.case((stale, by), else_=_COUNTERS.c.count + by),
                since=sa.case((stale, stamp), else_=_COUNTERS.c.since),
            )
            .returning(_COUNTERS.c.count, _COUNTERS.c.since)
        ).one()
        return int(row._mapping["count"]), float(row._mapping["since"])


_COUNTERS = core(SignInCounter)


def _upsert(connection: sa.Connection) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


# ---- the client's address ----------------------------------------------------------------------

TRUSTED_PROXIES_ENV = "GPDPR_TRUSTED_PROXIES"


def trusted_proxies(configured: str | None = None) -> tuple[IPv4Network | IPv6Network, ...]:
    """The proxies whose X-Forwarded-For is believed: addresses or networks, comma-separated,
    from `configured` or GPDPR_TRUSTED_PROXIES (none when unset: the header is ignored)."""
    from gpdpr.errors import UserError

    text = os.environ.get(TRUSTED_PROXIES_ENV, "") if configured is None else configured
    found = []
    for part in text.split(","):
        if part.strip():
            try:
                found.append(ip_network(part.strip(), strict=False))
            except ValueError:
                raise UserError(
                    f"{part.strip()!r} in {TRUSTED_PROXIES_ENV} is not an IP address or network "
                    "(like 10.0.0.5 or 10.0.0.0/24)"
                ) from None
    return tuple(found)


def client_address(request: Request) -> str:
    """The address the request came from. X-Forwarded-For is read only when the connection
    comes from a configured trusted proxy, and then from the right: the first address that is
    not itself a trusted proxy is the client (what is further left, the client wrote)."""
    peer = request.client.host if request.client else "unknown"
    proxies: tuple[IPv4Network | IPv6Network, ...] = getattr(
        request.app.state, "trusted_proxies", ()
    )
    if not proxies or not _within(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
    for hop in reversed([h for h in hops if h]):
        try:
            ip_address(hop)
        except ValueError:
            return peer  # a malformed chain: believe only the connection
        if not _within(hop, proxies):
            return hop
    return peer


def _within(address: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)
