"""Rendering pages: one Jinja2 environment over the portal's templates, the navigation each
visitor sees (by role), and the error page. Autoescaping is on for every template."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from gpdpr.portal.security import PATIENT, csrf_token, current

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))
# On for every template: the default (select_autoescape) goes by the name's ending, and ours end
# in .j2, which it would leave unescaped.
templates.env.autoescape = True
templates.env.trim_blocks = True
templates.env.lstrip_blocks = True


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{value:%d %B %Y, %H:%M} UTC"


def _day(value: Any) -> str:
    return "" if value is None else f"{value:%d %B %Y}"


templates.env.filters["when"] = _when
templates.env.filters["day"] = _day
templates.env.filters["words"] = lambda text: str(text).replace("_", " ")


@dataclass(frozen=True)
class Link:
    href: str
    label: str
    roles: frozenset[str]  # empty: everyone


# The navigation, in order: the public pages, then each role's.
NAVIGATION: list[Link] = [
    Link("/", "Home", frozenset()),
    Link("/what-we-collect", "What we collect", frozenset()),
    Link("/safeguards", "Limits and safeguards", frozenset()),
    Link("/register", "Data Uses Register", frozenset()),
    Link("/statistics", "Statistics", frozenset()),
    Link("/log", "Activity log", frozenset()),
    Link("/opting-out", "How to opt out", frozenset()),
    Link("/patient", "Your opt-outs", frozenset({PATIENT})),
    Link("/patient/record", "How your record was used", frozenset({PATIENT})),
    Link("/applications", "Applications", frozenset({"applicant"})),
    Link("/research", "Research", frozenset({"applicant"})),
    Link("/panel", "Panel", frozenset({"panel_member", "administrator"})),
    Link("/checking", "Output checking", frozenset({"output_checker"})),
    Link("/admin", "Administration", frozenset({"administrator"})),
]


def navigation(request: Request) -> list[Link]:
    session = current(request)
    roles = session.roles if session else frozenset()
    return [link for link in NAVIGATION if not link.roles or link.roles & roles]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    session = current(request)
    flash = list(session.flash) if session else []
    if session:
        session.flash.clear()
    context.setdefault("errors", [])
    response = templates.TemplateResponse(
        request,
        template,
        {
            "session": session,
            "nav": navigation(request),
            "path": request.url.path,
            "csrf": lambda: csrf_token(request),
            "flash": flash,
            **context,
        },
        status_code=status_code,
    )
    return response


def page_error(request: Request, status: int, message: str) -> HTMLResponse:
    titles = {
        400: "That could not be done",
        401: "Sign in first",
        403: "Not allowed",
        404: "Page not found",
        409: "That could not be done",
        429: "Too many attempts",
        503: "Not available just now",
    }
    return render(
        request,
        "error.html.j2",
        status_code=status,
        title=titles.get(status, "Something went wrong"),
        message=message,
    )


def not_found(request: Request) -> HTMLResponse:
    """The one answer for a thing that does not exist and a thing the visitor may not see, so a
    guessed reference tells them nothing."""
    return page_error(request, 404, "There is nothing here, or nothing you can see.")
