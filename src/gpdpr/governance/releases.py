"""Releases: results that leave the research environment under an agreement. The research
environment calls `record_release` once two output checkers have passed them; this is where the
rules about who may check are kept, so that no path out of the environment can skip them. A
release always says what made it: the run, the lake version it read, and the query definition
(canonical JSON) whose SHA-256 is its `code_sha256`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime

import orjson
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
    *,
    run_reference: str,
    lake_version: int,
    definition: str,
) -> Release:
    """Record a release under agreement `reference`, requested by a team member and passed by
    two different output checkers, neither of them on the project's team (a checker never
    approves their own project's outputs) nor from the requester's organisation. It was made by
    run `run_reference` on lake version `lake_version` from the query `definition` (canonical
    JSON), whose SHA-256 must be `code_sha256`."""
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
    requester = acting(session, requested_by, "applicant", "request a release")
    for checker in (first, second):
        if checker.organisation_id is not None and (
            checker.organisation_id == requester.organisation_id
        ):
            assert checker.organisation is not None
            raise NotAllowed(
                f"{checker.handle} cannot check outputs of {reference}: they belong to "
                f"{checker.organisation.name}, as does {requested_by}, who asked for the "
                "release; output checkers come from outside the author's organisation"
            )
    parties = {o.organisation_id: o.role for o in made.application.organisations}
    for checker in (first, second):
        if checker.organisation_id is not None and checker.organisation_id in parties:
            assert checker.organisation is not None
            raise NotAllowed(
                f"{checker.handle} cannot check outputs of {reference}: they belong to "
                f"{checker.organisation.name}, the project's "
                f"{parties[checker.organisation_id]}; output checkers come from outside every "
                "organisation of the project"
            )
    if not title.strip():
        raise UserError("a release needs a title: it is published on the register")
    if not _SHA256.match(code_sha256):
        raise UserError(f"code_sha256 {code_sha256!r} is not a SHA-256 in hex")
    bad = [name for name, digest in files.items() if not _SHA256.match(digest)]
    if not files or bad:
        raise UserError(f"a release lists its files with their SHA-256s (bad: {bad or 'none'})")
    if not run_reference.strip() or len(run_reference) > 32:
        raise UserError(f"a release names the run that made it (got {run_reference!r})")
    if isinstance(lake_version, bool) or not isinstance(lake_version, int) or lake_version < 0:
        raise UserError(f"lake version {lake_version!r} is not a version number (0 or more)")
    try:
        orjson.loads(definition)
    except orjson.JSONDecodeError:
        raise UserError("a release's query definition must be JSON, as the run kept it") from None
    made_by = hashlib.sha256(definition.encode()).hexdigest()
    if made_by != code_sha256:
        raise UserError(
            f"code_sha256 {code_sha256} is not the SHA-256 of the definition given ({made_by}): "
            "a release publishes exactly the definition that made it"
        )
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
        run_reference=run_reference,
        lake_version=lake_version,
        definition=definition,
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
            "run": run_reference,
            "lake_version": lake_version,
        },
    )
    return release
