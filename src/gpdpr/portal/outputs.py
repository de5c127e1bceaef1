"""Output checking: the release requests an output checker may review, each file by file, with
approve, reject or return (with comments). When every file has two approvals the request is
released: its files and definition are published on the register and the register is written
again, as `gpdpr tre review approve` does.

A checker sees only the requests they may check (not their own, not their project's, not their
organisation's) and those they have already reviewed; anything else is "nothing here".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gpdpr.errors import UserError
from gpdpr.governance import people, register
from gpdpr.portal.pages import not_found, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import GuardedRoute, allow, staff_session
from gpdpr.tre.models import ReleaseRequest
from gpdpr.tre.release import checking

router = APIRouter(route_class=GuardedRoute)


def checkable(session: Session, handle: str, reference: str) -> ReleaseRequest | None:
    """The request if `handle` may check it or has reviewed it, else None."""
    from sqlalchemy import select

    request = session.scalar(select(ReleaseRequest).where(ReleaseRequest.reference == reference))
    if request is None:
        return None
    me = people.person(session, handle)
    reviewed = any(r.checker_id == me.id for f in request.files for r in f.reviews)
    if reviewed or checking.ineligible(me, request) is None:
        return request
    return None


@router.get("/checking")
@allow("output_checker")
def checking_list(request: Request) -> Response:
    handle = staff_session(request).handle
    assert handle is not None

    def listed(s: Session) -> dict[str, Any]:
        waiting = checking.requests_awaiting(s, handle)
        me = people.person(s, handle)
        others = [
            r
            for r in checking.release_requests(s)
            if checking.ineligible(me, r) is None
            or any(v.checker_id == me.id for f in r.files for v in f.reviews)
        ]
        return {
            "waiting": [(r.reference, f.name, r.title) for r, f in waiting],
            "requests": [
                (r.reference, r.title, checking.STATE_WORDS[r.state], len(r.files)) for r in others
            ],
        }

    return render(request, "checking.html.j2", **portal_of(request).read(listed))


def _shown(request: Request, reference: str) -> dict[str, Any] | None:
    handle = staff_session(request).handle
    assert handle is not None

    def find(s: Session) -> dict[str, Any] | None:
        found = checkable(s, handle, reference)
        if found is None:
            return None
        shown = checking.show_request(s, reference)
        mine = {f["name"] for f in shown["files"] for r in f["reviews"] if r["checker"] == handle}
        return {"shown": shown, "reviewed": mine, "words": checking.STATE_WORDS}

    return portal_of(request).read(find)


@router.get("/checking/{reference}")
@allow("output_checker")
def show_request(request: Request, reference: str) -> Response:
    shown = _shown(request, reference)
    if shown is None:
        return not_found(request)
    return render(request, "request.html.j2", **shown)


@router.post("/checking/{reference}/review")
@allow("output_checker")
async def review_file(request: Request, reference: str) -> Response:
    data = await request.form()
    who = staff_session(request)
    handle = who.handle
    assert handle is not None
    portal = portal_of(request)
    if portal.read(lambda s: checkable(s, handle, reference)) is None:
        return not_found(request)
    name, decision = str(data.get("file", "")), str(data.get("decision", ""))
    comment = str(data.get("comment", ""))

    def act(s: Session) -> tuple[str, int | None]:
        from gpdpr.tre.review_cli import outputs_folder

        made = checking.review(s, handle, reference, name, decision, comment)
        if made.state == "released":
            assert made.release is not None
            # Before the commit: a file changed since it was requested refuses the release.
            checking.publish_files(
                made.release,
                outputs_folder(portal.home, made.run.reference),
                portal.home / "register",
            )
            return made.state, made.release.id
        return made.state, None

    try:
        state, release = await run_in_threadpool(portal.act, act)
    except UserError as exc:
        shown = _shown(request, reference)
        if shown is None:
            return not_found(request)
        return render(request, "request.html.j2", status_code=400, errors=[str(exc)], **shown)
    if release is not None:
        await run_in_threadpool(portal.act, lambda s: register.write(s, portal.home / "register"))
        who.flash.append(
            f"{reference} is released (release {release}): its files are published on the "
            "Data Uses Register."
        )
    else:
        verb = {"approve": "approved", "reject": "rejected", "return": "returned"}[decision]
        who.flash.append(f"You {verb} {name}. The request is {checking.STATE_WORDS[state]}.")
    return RedirectResponse(f"/checking/{reference}", status_code=303)
