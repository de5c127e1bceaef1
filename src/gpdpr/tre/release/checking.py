"""Output checking: how results leave the research environment, and only how.

A run's outputs wait inside the environment. A member of the project's team asks for some of
them to be released (`request_release`): only a succeeded run's files, exactly as the run wrote
them, while the agreement is in force, and not if their cells, set beside what anyone has
released or the requester's organisation has been shown, would give away a small group by
subtraction (`release.differencing`); and never a file, byte for byte, that checkers have
rejected or returned before (in any request). Two output checkers then review each file
(`review`); neither may be the author, on the project's team, from the author's organisation, or
from any organisation of the application (lead, collaborator or funder). Checkers see each file
with every cell's status from the run's `cells.json` (`show_request` with the home), never a raw
count. One rejection, or one return to the author with comments, ends the request. When
every file has two approvals the request is released: the release is recorded under the agreement
(`governance.releases.record_release`, which checks the checkers again), the raw counts of its
cells are kept for the differencing check of later releases, and `publish_files` copies the files
and the definition that made them to the public register.

Every function takes a session and does not commit: the caller's transaction is the unit, so a
refusal leaves the record exactly as it was. Every change of a request's state is a conditional
UPDATE on the state read, and a review first takes the request's row (an UPDATE on it), so two
checkers acting at once are serialised: neither review is lost and the request is released once.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.agreements import agreement, authorise
from gpdpr.governance.models import Agreement, Application, Person, Release, TeamMember
from gpdpr.governance.people import acting, person
from gpdpr.governance.register import DEFINITION_FILE, release_folder
from gpdpr.governance.releases import record_release
from gpdpr.tre.models import (
    DECISIONS,
    DISCLOSURE_RULES,
    ENGINES,
    RUN_STATUSES,
    FileReview,
    ReleaseRequest,
    RequestFile,
    Run,
)
from gpdpr.tre.release import differencing
from gpdpr.tre.release.disclosure import Cell, cell_of, cells_digest

APPROVALS_NEEDED = 2
STATE_WORDS = {
    "awaiting_review": "awaiting review",
    "returned": "returned to its author",
    "rejected": "rejected",
    "released": "released",
}
ORGANISATION_ROLES = {
    "lead": "the lead organisation",
    "collaborator": "a collaborator",
    "funder": "a funder",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A released file's name becomes a path on the register: one plain name, never a folder.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_COPY_CHUNK = 1 << 20


# ---- runs ---------------------------------------------------------------------------------------


def record_run(
    session: Session,
    handle: str,
    agreement_ref: str,
    definition_json: str,
    definition_sha256: str,
    lake_version: int,
    engine: str,
    disclosure_rule: str,
    status: str,
    message: str,
    outputs: Mapping[str, Mapping[str, Any]],
    started_at: datetime,
    finished_at: datetime | None,
) -> Run:
    """Record one run of a definition under an agreement, whatever came of it (a refused run
    too: the public record shows every query asked). `outputs` maps each file written to
    {"sha256": hex, "bytes": int, "rows": int}."""
    who = person(session, handle)
    made = agreement(session, agreement_ref)
    for what, value, allowed in (
        ("engine", engine, ENGINES),
        ("disclosure rule", disclosure_rule, DISCLOSURE_RULES),
        ("status", status, RUN_STATUSES),
    ):
        if value not in allowed:
            raise UserError(f"a run's {what} is one of {', '.join(allowed)} (got {value!r})")
    if not _SHA256.match(definition_sha256):
        raise UserError(f"definition_sha256 {definition_sha256!r} is not a SHA-256 in hex")
    if hashlib.sha256(definition_json.encode()).hexdigest() != definition_sha256:
        raise UserError(
            "definition_sha256 is not the SHA-256 of the definition's JSON: a run is recorded "
            "with the exact definition it ran"
        )
    try:
        orjson.loads(definition_json)
    except orjson.JSONDecodeError:
        raise UserError("a run's definition must be JSON (the serialised query)") from None
    if isinstance(lake_version, bool) or not isinstance(lake_version, int) or lake_version < 0:
        raise UserError(f"lake version {lake_version!r} is not a version number (0 or more)")
    kept = {name: _output(name, about) for name, about in sorted(outputs.items())}
    run = Run(
        reference=f"pending-{uuid.uuid4().hex[:20]}",  # until the id is known
        agreement_id=made.id,
        requested_by_id=who.id,
        definition=definition_json,
        definition_sha256=definition_sha256,
        lake_version=lake_version,
        engine=engine,
        status=status,
        message=message,
        started_at=started_at,
        finished_at=finished_at,
        outputs=kept,
        disclosure_rule=disclosure_rule,
    )
    session.add(run)
    session.flush()
    run.reference = f"RUN-{run.id:06d}"
    record(
        session,
        "tre.run",
        handle,
        {
            "run": run.reference,
            "project": made.application.reference,
            "agreement": made.reference,
            "definition_sha256": definition_sha256,
            "lake_version": lake_version,
            "engine": engine,
            "status": status,
        },
    )
    return run


def _output(name: str, about: Mapping[str, Any]) -> dict[str, Any]:
    sha = about.get("sha256")
    sizes = {key: about.get(key) for key in ("bytes", "rows")}
    if (
        not isinstance(sha, str)
        or not _SHA256.match(sha)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in sizes.values())
    ):
        raise UserError(
            f"output {name!r}: a run records each file as "
            f'{{"sha256": hex, "bytes": int, "rows": int}} (got {dict(about)!r})'
        )
    kept = {"sha256": sha, "bytes": sizes["bytes"], "rows": sizes["rows"]}
    if "cells_sha256" in about:  # a run records it; only hand-made records go without
        if not isinstance(about["cells_sha256"], str) or not _SHA256.match(about["cells_sha256"]):
            raise UserError(f"output {name!r}: cells_sha256 is not a SHA-256 in hex")
        kept["cells_sha256"] = about["cells_sha256"]
    return kept


def run_of(session: Session, reference: str) -> Run:
    found = session.scalar(sa.select(Run).where(Run.reference == reference))
    if found is None:
        raise UserError(f"no run {reference!r}: `gpdpr tre runs --as HANDLE` lists your runs")
    return found


def runs(session: Session, handle: str) -> list[Run]:
    """The runs of every project `handle` is on the team of, oldest first."""
    who = person(session, handle)
    query = (
        sa.select(Run)
        .join(Agreement, Agreement.id == Run.agreement_id)
        .join(TeamMember, TeamMember.application_id == Agreement.application_id)
        .where(TeamMember.person_id == who.id)
        .order_by(Run.id)
    )
    return list(session.scalars(query))


# ---- release requests ---------------------------------------------------------------------------


def request_release(
    session: Session,
    handle: str,
    run_ref: str,
    files: Mapping[str, tuple[str, int]],
    title: str,
    description: str,
    cells: Sequence[Cell],
    at: datetime | None = None,
) -> ReleaseRequest:
    """Ask for some of a run's output files (name -> (sha256, bytes), as they are now) to be
    released, with the cells they publish (`cells` of other files are ignored). Refused unless
    `handle` is on the project's team, the agreement is in force, the run succeeded, every file
    is one of its outputs unchanged, and the cells pass the differencing check against
    everything released and everything the requester or their organisation has seen."""
    at = at or now()
    run = run_of(session, run_ref)
    made = run.agreement
    authorise(session, handle, made.reference, {}, at)  # in force, and a team member asking
    requester = acting(session, handle, "applicant", "ask for a release")
    if run.status != "succeeded":
        # Not the run's message: why a real run stopped can depend on the data.
        raise NotAllowed(
            f"{run.reference} {run.status}; only a succeeded run's outputs can be released"
        )
    if not files:
        raise UserError(
            f"name at least one of {run.reference}'s output files to release "
            f"({', '.join(run.outputs) or 'it wrote none'})"
        )
    for name, (sha256, size) in sorted(files.items()):
        _check_name(name)
        written = run.outputs.get(name)
        if written is None:
            raise UserError(
                f"{name!r} is not an output of {run.reference}; its outputs are "
                f"{', '.join(run.outputs) or 'none'}"
            )
        if sha256 != written["sha256"] or size != written["bytes"]:
            raise NotAllowed(
                f"{name} is not the file {run.reference} wrote: it has SHA-256 {sha256} and "
                f"{size} bytes, the run recorded {written['sha256']} and {written['bytes']} "
                "bytes. A changed file cannot be released: run the definition again"
            )
    _refuse_asked_already(session, run, set(files))
    _refuse_turned_down(session, files)
    title = title.strip()
    if not title or len(title) > 300:
        raise UserError("a release request needs a title of at most 300 characters")
    asked = [c for c in cells if c.file in files]
    for name in files:
        recorded = run.outputs[name].get("cells_sha256")
        if recorded is not None and cells_digest([c for c in asked if c.file == name]) != recorded:
            raise NotAllowed(
                f"the cells given for {name} are not those {run.reference} recorded: a release "
                "is checked against every number the run considered, read from the run's folder"
            )
    differencing.check(session, requester.id, asked, for_release=True)
    request = ReleaseRequest(
        reference=f"pending-{uuid.uuid4().hex[:20]}",
        run_id=run.id,
        requested_by_id=requester.id,
        title=title,
        description=description.strip(),
        state="awaiting_review",
        cells=[asdict(c) for c in asked],
        created_at=at,
        decided_at=None,
        release_id=None,
        files=[
            RequestFile(name=name, sha256=sha256, bytes=size)
            for name, (sha256, size) in sorted(files.items())
        ],
    )
    session.add(request)
    session.flush()
    request.reference = f"REQ-{request.id:06d}"
    record(
        session,
        "release.requested",
        handle,
        {
            "request": request.reference,
            "run": run.reference,
            "project": made.application.reference,
            "agreement": made.reference,
            "title": title,
            "files": {f.name: f.sha256 for f in request.files},
        },
    )
    return request


def _refuse_asked_already(session: Session, run: Run, names: set[str]) -> None:
    """A file is in at most one live request: two at once would each be checked by reviewers
    who cannot see the other, and a released file needs no second release."""
    earlier = session.execute(
        sa.select(RequestFile.name, ReleaseRequest.reference, ReleaseRequest.state)
        .join(ReleaseRequest, ReleaseRequest.id == RequestFile.request_id)
        .where(
            ReleaseRequest.run_id == run.id,
            RequestFile.name.in_(sorted(names)),
            ReleaseRequest.state.in_(("awaiting_review", "released")),
        )
        .order_by(RequestFile.name)
    ).first()
    if earlier is not None:
        name, reference, state = earlier
        raise NotAllowed(
            f"{name} of {run.reference} is already in {reference}, {STATE_WORDS[state]}; "
            "follow that request (`gpdpr tre review show "
            + reference
            + "`) instead of asking again"
        )


def _refuse_turned_down(session: Session, files: Mapping[str, tuple[str, int]]) -> None:
    """A file checkers rejected or returned, asked for again unchanged (from any run, under any
    name), would only wait for a less careful checker: it is refused by its SHA-256."""
    by_sha = {sha256: name for name, (sha256, _) in sorted(files.items())}
    earlier = session.execute(
        sa.select(RequestFile.sha256, ReleaseRequest.reference, ReleaseRequest.state)
        .join(ReleaseRequest, ReleaseRequest.id == RequestFile.request_id)
        .where(
            RequestFile.sha256.in_(sorted(by_sha)),
            ReleaseRequest.state.in_(("rejected", "returned")),
        )
        .order_by(ReleaseRequest.id)
    ).first()
    if earlier is not None:
        sha256, reference, state = earlier
        raise NotAllowed(
            f"{by_sha[sha256]} is, byte for byte, a file that was {STATE_WORDS[state]} in "
            f"{reference}: a file turned down cannot be asked for again unchanged. Read the "
            f"checkers' comments (`gpdpr tre review show {reference}`), change the definition, "
            "run it again and ask for the new outputs"
        )


def _check_name(name: str) -> None:
    if not _FILE_NAME.match(name) or name == DEFINITION_FILE:
        raise UserError(
            f"{name!r} cannot be released under that name: a released file has a plain name of "
            f"letters, digits, '.', '_' and '-' (not {DEFINITION_FILE}, which is the definition)"
        )


def request_of(session: Session, reference: str) -> ReleaseRequest:
    found = session.scalar(sa.select(ReleaseRequest).where(ReleaseRequest.reference == reference))
    if found is None:
        raise UserError(f"no release request {reference!r}: `gpdpr tre review requests` lists them")
    return found


def release_requests(session: Session, state: str | None = None) -> list[ReleaseRequest]:
    query = sa.select(ReleaseRequest).order_by(ReleaseRequest.id)
    if state is not None:
        query = query.where(ReleaseRequest.state == state)
    return list(session.scalars(query))


# ---- review -------------------------------------------------------------------------------------


def review(
    session: Session,
    checker_handle: str,
    request_ref: str,
    file_name: str,
    decision: str,
    comment: str = "",
    at: datetime | None = None,
) -> ReleaseRequest:
    """One output checker's decision on one file of a request: 'approve', 'reject' or 'return'
    (the last two with a comment, and final for the request). Once every file has two
    approvals the request is released (see the module's docstring); the request is returned,
    its `state` saying where it stands."""
    at = at or now()
    if decision not in DECISIONS:
        raise UserError(f"a review decides one of {', '.join(DECISIONS)} (got {decision!r})")
    comment = comment.strip()
    if decision != "approve" and not comment:
        raise UserError(
            f"say why you {decision} {file_name} in a comment: the author reads it to know what "
            "to change"
        )
    request = _take(session, request_ref)
    checker = acting(session, checker_handle, "output_checker", "check outputs")
    why_not = ineligible(checker, request)
    if why_not is not None:
        raise NotAllowed(f"{checker_handle} cannot check {request_ref}: {why_not}")
    file = next((f for f in request.files if f.name == file_name), None)
    if file is None:
        raise UserError(
            f"{request_ref} has no file {file_name!r}; its files are "
            f"{', '.join(f.name for f in request.files)}"
        )
    if any(r.checker_id == checker.id for r in file.reviews):
        raise NotAllowed(
            f"{checker_handle} has already reviewed {file_name} of {request_ref}: each checker "
            "reviews each file once, and a second approval must come from another checker"
        )
    file.reviews.append(
        FileReview(checker_id=checker.id, decision=decision, comment=comment, at=at)
    )
    session.flush()
    record(
        session,
        "release.reviewed",
        checker_handle,
        {
            "request": request.reference,
            "file": file_name,
            "decision": decision,
            "checker": checker_handle,
        },
    )
    if decision == "reject":
        _move(session, request, "rejected", at)
    elif decision == "return":
        _move(session, request, "returned", at)
    elif all(_approvers(f) >= APPROVALS_NEEDED for f in request.files):
        _release(session, request, at)
    return request


def _take(session: Session, reference: str) -> ReleaseRequest:
    """The request, awaiting review, with its row taken for this transaction: the UPDATE comes
    first, so a second checker acting at once waits here and then sees this one's review."""
    taken = session.execute(
        sa.update(ReleaseRequest)
        .where(ReleaseRequest.reference == reference, ReleaseRequest.state == "awaiting_review")
        .values(state="awaiting_review"),
        execution_options={"synchronize_session": False},
    )
    found = session.scalar(
        sa.select(ReleaseRequest)
        .where(ReleaseRequest.reference == reference)
        .execution_options(populate_existing=True)
    )
    if found is None:
        raise UserError(f"no release request {reference!r}: `gpdpr tre review requests` lists them")
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise NotAllowed(
            f"{reference} is {STATE_WORDS[found.state]}: there is nothing more to review "
            "(a returned or rejected request is final; the author asks again from a new run)"
        )
    for file in found.files:  # the reviews as committed now, not as first read
        session.refresh(file, ["reviews"])
    return found


def ineligible(checker: Person, request: ReleaseRequest) -> str | None:
    """Why `checker` may not check `request` (None: they may)."""
    run = request.run
    app = run.agreement.application
    if checker.id in (request.requested_by_id, run.requested_by_id):
        return (
            f"they are the author ({run.reference} or its release request is theirs), and no one "
            "checks their own outputs"
        )
    if any(m.person_id == checker.id for m in app.team):
        return (
            f"they are on the team of {app.reference}, and no one checks their own project's "
            "outputs"
        )
    if checker.organisation is None:
        return None
    for author in (request.requested_by, run.requested_by):
        if checker.organisation_id == author.organisation_id:
            return (
                f"they belong to {checker.organisation.name}, as does the author {author.handle}; "
                "output checkers come from outside the author's organisation"
            )
    for on in app.organisations:
        if on.organisation_id == checker.organisation_id:
            return (
                f"they belong to {checker.organisation.name}, {ORGANISATION_ROLES[on.role]} of "
                f"{app.reference}; output checkers come from outside every organisation the "
                "application names (lead, collaborators and funders)"
            )
    return None


def _approvers(file: RequestFile) -> int:
    return len({r.checker_id for r in file.reviews if r.decision == "approve"})


def _move(
    session: Session, request: ReleaseRequest, to: str, at: datetime, release_id: int | None = None
) -> None:
    moved = session.execute(
        sa.update(ReleaseRequest)
        .where(ReleaseRequest.id == request.id, ReleaseRequest.state == "awaiting_review")
        .values(state=to, decided_at=at, release_id=release_id),
        execution_options={"synchronize_session": "fetch"},
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise NotAllowed(f"{request.reference} changed while this was being done: look again")


def _release(session: Session, request: ReleaseRequest, at: datetime) -> None:
    """Every file has its approvals: record the release (which checks the agreement and the
    checkers again), keep the raw counts of its cells, and mark the request released."""
    run = request.run
    made = run.agreement
    cells = _asked_cells(request)
    # Again now: a request released since this one was made may sit too close to it.
    differencing.check(session, request.requested_by_id, cells, for_release=True)
    approvals = sorted(
        (r for f in request.files for r in f.reviews if r.decision == "approve"),
        key=lambda r: (r.at, r.id),
    )
    approvers = list(dict.fromkeys(r.checker.handle for r in approvals))
    release = record_release(
        session,
        made.reference,
        request.requested_by.handle,
        (approvers[0], approvers[1]),
        request.title,
        request.description,
        run.definition_sha256,
        {f.name: f.sha256 for f in request.files},
        at,
        run_reference=run.reference,
        lake_version=run.lake_version,
        definition=run.definition,
    )
    session.flush()
    differencing.remember(session, request.requested_by_id, run.id, cells, released=True)
    _move(session, request, "released", at, release.id)
    session.expire(request, ["release"])  # loaded again, now linked, when next read


def _asked_cells(request: ReleaseRequest) -> list[Cell]:
    """The cells kept with a request; a request made before cells were keyed by what they count
    (migration 0006) cannot be checked for differencing, so it cannot be released."""
    try:
        return [cell_of(c) for c in request.cells]
    except TypeError:
        raise NotAllowed(
            f"{request.reference} was asked for before numbers were compared by what they "
            "count, so it cannot be checked for differencing: return it to its author, who "
            "asks again from the same run"
        ) from None


def requests_awaiting(
    session: Session, checker_handle: str
) -> list[tuple[ReleaseRequest, RequestFile]]:
    """The files `checker_handle` may still review: in requests awaiting review that they may
    check, and not yet reviewed by them."""
    checker = acting(session, checker_handle, "output_checker", "check outputs")
    return [
        (request, file)
        for request in release_requests(session, "awaiting_review")
        if ineligible(checker, request) is None
        for file in request.files
        if all(r.checker_id != checker.id for r in file.reviews)
    ]


def show_request(session: Session, ref: str, home: Path | None = None) -> dict[str, Any]:
    """Everything about one request that its author and the checkers see (never a raw count).
    With `home` (for the checkers), each file also has its cells' statuses from the run's
    cells.json: `cells`, a list of `CellStatus`, and `statuses`, the count of each (both None
    when the run kept no cells)."""
    request = request_of(session, ref)
    run = request.run
    app: Application = run.agreement.application
    names = [f.name for f in request.files]
    statuses = None if home is None else cell_statuses(_cells_path(home, run.reference), names)
    return {
        "request": request.reference,
        "title": request.title,
        "description": request.description,
        "state": request.state,
        "requested_by": request.requested_by.handle,
        "organisation": (
            request.requested_by.organisation.name if request.requested_by.organisation else None
        ),
        "created_at": request.created_at,
        "decided_at": request.decided_at,
        "project": app.reference,
        "agreement": run.agreement.reference,
        "run": {
            "reference": run.reference,
            "by": run.requested_by.handle,
            "engine": run.engine,
            "lake_version": run.lake_version,
            "disclosure_rule": run.disclosure_rule,
            "definition_sha256": run.definition_sha256,
            "finished_at": run.finished_at,
        },
        "files": [
            {
                "name": f.name,
                "sha256": f.sha256,
                "bytes": f.bytes,
                "rows": run.outputs.get(f.name, {}).get("rows"),
                "approvals": _approvers(f),
                "reviews": [
                    {
                        "checker": r.checker.handle,
                        "decision": r.decision,
                        "comment": r.comment,
                        "at": r.at,
                    }
                    for r in f.reviews
                ],
                "cells": None if statuses is None else statuses[f.name],
                "statuses": None if statuses is None else count_statuses(statuses[f.name]),
            }
            for f in request.files
        ],
        "release": request.release_id,
    }


# ---- what checkers see of each cell -------------------------------------------------------------

CELL_STATUSES = ("published", "rounded", "redacted", "suppressed")


@dataclass(frozen=True, slots=True)
class CellStatus:
    """What a checker sees of one cell: where it is and what disclosure control did to it, in
    words. Never its raw count nor the key it is matched by: those stay in cells.json."""

    file: str
    row: int  # 1-based data row of the file
    column: str
    status: str  # one of CELL_STATUSES
    reason: str  # plain words, never a number from the data ("" when the run kept none)


def cell_statuses(path: Path, files: Collection[str]) -> dict[str, list[CellStatus]] | None:
    """The statuses of the cells of `files` in a run's cells.json (None if the run has none),
    by file. Entries come in two shapes: {file, row, column, status, reason, ...} and the
    earlier {file, row, column, dims, raw, released}, read as published if released, else
    redacted, with no reason. Only the five fields above are taken from an entry."""
    if not path.is_file():
        return None
    try:
        entries = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UserError(f"cannot read the cell statuses in {path}: {exc}") from None
    if not isinstance(entries, list):
        raise UserError(f"{path} is not a list of cells")
    found: dict[str, list[CellStatus]] = {name: [] for name in files}
    for n, entry in enumerate(entries, 1):
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or file not in found:
            continue
        found[entry["file"]].append(_cell_status(entry, f"{path}, cell {n}"))
    return found


def _cell_status(entry: dict[str, Any], where: str) -> CellStatus:
    if "status" in entry:
        status, reason = entry["status"], entry.get("reason", "")
    else:
        status, reason = ("published" if entry.get("released") is True else "redacted"), ""
    row, column = entry.get("row"), entry.get("column")
    if (
        status not in CELL_STATUSES
        or not isinstance(reason, str)
        or isinstance(row, bool)
        or not isinstance(row, int)
        or not isinstance(column, str)
    ):
        raise UserError(
            f"{where} is not a cell as disclosure control writes it (a row number, a column, "
            f"a status among {', '.join(CELL_STATUSES)} and a reason in words)"
        )
    return CellStatus(entry["file"], row, column, status, reason)


def count_statuses(cells: Sequence[CellStatus]) -> dict[str, int]:
    """How many cells have each status, every status named (0 included), in their order."""
    counted = Counter(c.status for c in cells)
    return {status: counted[status] for status in CELL_STATUSES}


def _cells_path(home: Path, run_reference: str) -> Path:
    from gpdpr.tre.runs import CELLS, run_folder

    return run_folder(home, run_reference) / CELLS


# ---- publishing ---------------------------------------------------------------------------------


def publish_files(release: Release, source_folder: Path, register_folder: Path) -> Path:
    """Copy a release's files from `source_folder` (the run's outputs) into the register's
    folder for it, with `definition.json`, the exact definition that made them; the folder.
    Each file is checked against the SHA-256 it was released with as it is copied: one that
    changed refuses the whole publication. The files are gathered in a folder beside the final
    one and renamed into place, so the register never shows half a release and a refusal leaves
    it as it was."""
    if release.definition is None:
        raise UserError(
            f"release {release.id} was recorded without its definition, so it cannot be "
            "published from here"
        )
    folder = register_folder / release_folder(release.id)
    staging = folder.with_name(f".{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
        for name, sha256 in sorted(release.files.items()):
            _check_name(name)
            _copy_checked(source_folder / name, staging / name, sha256)
        (staging / DEFINITION_FILE).write_bytes(release.definition.encode())
        if folder.exists():  # published before (the record then failed to commit): replace
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.replace(old)
            staging.replace(folder)
            shutil.rmtree(old)
        else:
            staging.replace(folder)
    except OSError as exc:
        raise UserError(f"cannot publish release {release.id} in {folder}: {exc}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _copy_checked(source: Path, target: Path, sha256: str) -> None:
    if not source.is_file():
        raise UserError(
            f"{source.name} is missing from {source.parent}: the run's outputs must stay where "
            "the run wrote them until they are published"
        )
    digest = hashlib.sha256()
    with source.open("rb") as reading, target.open("wb") as writing:
        while chunk := reading.read(_COPY_CHUNK):
            digest.update(chunk)
            writing.write(chunk)
    if digest.hexdigest() != sha256:
        raise NotAllowed(
            f"{source.name} changed after it was checked (its SHA-256 is now "
            f"{digest.hexdigest()}, it was released as {sha256}): nothing was published; "
            "reject the request and run the definition again"
        )
