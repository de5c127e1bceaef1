"""The portal application: every route module, mounted with the guard, the static files, the
error pages and the security headers.

`create_app(home)` builds it over a service home; `gpdpr portal serve` (and the demo) serve it
with uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

from gpdpr.portal import (
    accounts,
    applications,
    log,
    outputs,
    patient,
    public,
    research,
    staff_oidc,
)
from gpdpr.portal.idp import IdentityProvider
from gpdpr.portal.pages import page_error
from gpdpr.portal.research import DUMMY_PATIENTS, DummyRunner
from gpdpr.portal.second_factors import required_roles
from gpdpr.portal.security import Passwords, RateLimit, trusted_proxies
from gpdpr.portal.service import Portal

STATIC = Path(__file__).parent / "static"
LOG = logging.getLogger("gpdpr.portal")

# Every route module of the portal (each page's link, if it has one, is in pages.NAVIGATION).
ROUTERS = (public, log, patient, accounts, applications, outputs, research)

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every endpoint route of the app, through included routers (which newer FastAPI keeps as
    wrappers around the original router)."""
    found: list[APIRoute] = []

    def walk(routes: Sequence[BaseRoute]) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)

    walk(app.routes)
    return found


def with_headers(request: Request, response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.url.scheme == "https":
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def server_error(request: Request) -> Response:
    """The site's error page for a fault in the portal itself; the traceback goes to the
    server's log, never to the visitor."""
    LOG.exception("unhandled error answering %s %s", request.method, request.url.path)
    try:
        return page_error(
            request,
            500,
            "Something went wrong on our side, and what you asked for may not have been done. "
            "Try again in a few minutes; if it happens again, tell the service desk the time.",
        )
    except Exception:  # the page itself failed: plain words, still no traceback
        LOG.exception("the error page itself failed")
        return PlainTextResponse("Something went wrong on our side.", status_code=500)


def create_app(
    home: Path,
    passwords: Passwords | None = None,
    rate_limit: RateLimit | None = None,
    dummy_patients: int = DUMMY_PATIENTS,
    proxies: str | None = None,
    organisation_provider: str | None = None,
) -> FastAPI:
    """The portal over `home`. `proxies`: the trusted proxies whose X-Forwarded-For is read
    (addresses or networks, comma-separated); default GPDPR_TRUSTED_PROXIES, else none.
    `organisation_provider`: the file configuring staff sign-in at their organisation's OpenID
    Connect provider (see `staff_oidc`); default GPDPR_STAFF_OIDC, else none."""
    required_roles()  # a mistyped role stops the portal here, not each staff request later
    portal = Portal(home, passwords, rate_limit)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        portal.close()

    app = FastAPI(
        title="gpdpr portal",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.portal = portal
    app.state.sessions = portal.sessions
    app.state.idp = IdentityProvider(home / "idp", portal.passwords)
    app.state.dummy = DummyRunner(home / "portal" / "dummy", dummy_patients)
    app.state.trusted_proxies = trusted_proxies(proxies)
    app.state.staff_oidc = staff_oidc.configured(organisation_provider)
    for module in ROUTERS:
        app.include_router(module.router)
    for route in api_routes(app):
        if route.methods and "GET" in route.methods:
            route.methods.add("HEAD")  # what a GET answers, without the body
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception:
            response = server_error(request)
        return with_headers(request, response)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> Response:
        # The last resort, outside every middleware: what escaped the one above.
        return with_headers(request, server_error(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return page_error(request, 404, "There is nothing here, or nothing you can see.")
        if exc.status_code == 405:
            return page_error(request, 405, "That cannot be done to this page.")
        return page_error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return page_error(request, 400, "The request was not understood: nothing was changed.")

    return app
