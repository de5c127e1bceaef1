"""The portal's security core: who may reach each route, server-side sessions, CSRF tokens,
password hashing and the sign-in rate limit.

**Deny by default.** Every route declares who may reach it with `@allow(...)`: `PUBLIC`, or one
or more roles. `GuardedRoute` (the class every route of the portal is made with) checks the
declaration on each request before the endpoint runs, and a route that declares nothing is
refused to everyone (a test also checks that every registered route declares a policy).

**Sessions** live on the server; the cookie carries only a random 256-bit id (HttpOnly,
SameSite=Lax, Secure when the portal is reached over TLS). The id changes at every sign-in (no
session fixation) and the session ends after 30 idle minutes or 8 hours, or at sign-out. A
patient's session holds their lake pseudonym, never their NHS number. Sessions are kept in the
server process's memory: restarting the server signs everyone out, and a deployment running
several processes would put them in a shared store instead.

**CSRF.** Every state-changing request (POST) must carry the session's synchroniser token in
the `csrf_token` form field; a missing or wrong one is refused before the endpoint runs.

**Rate limit.** Failed sign-ins are counted per account and per client address over a sliding
window, in this process's memory (like the sessions: a restart clears the counts).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse

PUBLIC = "public"
PATIENT = "patient"
STAFF_ROLES = ("applicant", "panel_member", "output_checker", "administrator")
ROLES = (PATIENT, *STAFF_ROLES)
SIGNED_IN = ROLES  # any signed-in person (to sign out)

COOKIE = "gpdpr_session"
CSRF_FIELD = "csrf_token"
IDLE_SECONDS = 30 * 60
LIFETIME_SECONDS = 8 * 60 * 60
MAX_SESSIONS = 200_000

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

    @property
    def signed_in(self) -> bool:
        return bool(self.roles)

    def has(self, role: str) -> bool:
        return role in self.roles


class Sessions:
    """Server-side sessions by random id, in this process's memory."""

    def __init__(self) -> None:
        self._by_id: dict[str, PortalSession] = {}
        self._lock = threading.Lock()

    def new(self) -> PortalSession:
        stamp = time.time()
        made = PortalSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), stamp, stamp)
        with self._lock:
            if len(self._by_id) >= MAX_SESSIONS:
                self._purge(stamp)
            self._by_id[made.id] = made
        return made

    def get(self, session_id: str | None) -> PortalSession | None:
        if not session_id:
            return None
        stamp = time.time()
        with self._lock:
            found = self._by_id.get(session_id)
            if found is None:
                return None
            if stamp - found.seen > IDLE_SECONDS or stamp - found.created > LIFETIME_SECONDS:
                del self._by_id[session_id]
                return None
            found.seen = stamp
            return found

    def rotate(self, old: PortalSession) -> PortalSession:
        """A new id and token for a session whose privileges change (signing in)."""
        fresh = self.new()
        fresh.pending = {}
        fresh.flash = list(old.flash)
        self.end(old)
        return fresh

    def end(self, session: PortalSession) -> None:
        with self._lock:
            self._by_id.pop(session.id, None)

    def _purge(self, stamp: float) -> None:
        for key in [
            k
            for k, s in self._by_id.items()
            if stamp - s.seen > IDLE_SECONDS or stamp - s.created > LIFETIME_SECONDS
        ]:
            del self._by_id[key]
        if len(self._by_id) >= MAX_SESSIONS:  # still full: the least recently seen go first
            for key, _ in sorted(self._by_id.items(), key=lambda kv: kv[1].seen)[
                : MAX_SESSIONS // 10
            ]:
                del self._by_id[key]


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
            session = sessions.get(request.cookies.get(COOKIE))
            request.state.session = session
            request.state.set_cookie = False
            request.state.clear_cookie = session is None and COOKIE in request.cookies
            refusal = await _refusal(request, allowed, session)
            response = refusal if refusal is not None else await handler(request)
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
        if session is None or not session.signed_in:
            if request.method == "GET":
                target = "/patient/sign-in" if allowed == {PATIENT} else "/sign-in"
                return RedirectResponse(f"{target}?next={_local(request)}", status_code=303)
            return page_error(request, 401, "Sign in first.")
        if not (session.roles & allowed):
            return page_error(request, 403, "Your account does not give you access to this page.")
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
    """Failed sign-ins per key (an account, a client address) over a sliding window."""

    def __init__(self, per_account: int = 5, per_address: int = 20, window: float = 900) -> None:
        self.limits = {"account": per_account, "address": per_address}
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, keys: Iterable[tuple[str, str]]) -> float:
        """Seconds until the first of `keys` (kind, value) may try again (0: none is blocked)."""
        stamp = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, stamp)
                if len(times) >= self.limits[key[0]]:
                    wait = max(wait, times[0] + self.window - stamp)
        return wait

    def failed(self, keys: Iterable[tuple[str, str]]) -> None:
        stamp = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, stamp).append(stamp)

    def _recent(self, key: tuple[str, str], stamp: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= stamp - self.window:
            times.popleft()
        return times


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
