"""Releases: results that leave the research environment under an agreement. The research
environment calls `record_release` once two output checkers have passed them; this is where the
rules about who may check are kept, so that no path out of the environment can skip them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.agreements import agreement, authorise
from gpdpr.governance.models import Release
from gpdpr.governance.people import acting

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def record_release(
    session: Session,
    reference: str,
    requested_by: str,
    checkers: tuple[str, str],
    title: str,
    description: str,
    code_sha256: str,
    files: Mapping[str, str],
    at: datetime | None = None,
) -> Release:
    """Record a release under agreement `reference`, requested by a team member and passed by
    two different output checkers, neither of them on the project's team (a checker never
    approves their own project's outputs)."""
    at = at or now()
    authorise(session, requested_by, reference, {}, at)  # in force, and a team member asking
    made = agreement(session, reference)
    first, second = (
        acting(session, handle, "output_checker", "check outputs") for handle in checkers
    )
    if first.id == second.id:
        raise NotAllowed(f"a release needs two different output checkers ({first.handle} twice)")
    for checker in (first, second):
        if checker.handle == requested_by or any(
            m.person_id == checker.id for m in made.application.team
        ):
            raise NotAllowed(
                f"{checker.handle} cannot check outputs of {reference}: they are on its "
                "project's team, and no one checks their own project's outputs"
            )
    if not title.strip():
        raise UserError("a release needs a title: it is published on the register")
    if not _SHA256.match(code_sha256):
        raise UserError(f"code_sha256 {code_sha256!r} is not a SHA-256 in hex")
    bad = [name for name, digest in files.items() if not _SHA256.match(digest)]
    if not files or bad:
        raise UserError(f"a release lists its files with their SHA-256s (bad: {bad or 'none'})")
    requester = acting(session, requested_by, "applicant", "request a release")
    release = Release(
        agreement_id=made.id,
        title=title.strip(),
        description=description.strip(),
        code_sha256=code_sha256,
        files=dict(sorted(files.items())),
        requested_by_id=requester.id,
        first_checker_id=first.id,
        second_checker_id=second.id,
        released_at=at,
    )
    session.add(release)
    record(
        session,
        "release.published",
        f"{first.handle}, {second.handle}",
        {
            "agreement": reference,
            "title": release.title,
            "code_sha256": code_sha256,
            "files": release.files,
        },
    )
    return release
