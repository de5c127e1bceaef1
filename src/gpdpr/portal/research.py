"""Research, for applicants: upload a definition (the JSON `gpdpr tre compile` writes), see its
results on dummy data, run it on the real data under an agreement they are on the team of, and
ask for outputs to be released and follow the checkers' reviews.

Uploaded definitions are kept per person (`HOME/portal/definitions/<person>/<sha256>.json`), so
one applicant's definition is never reachable by another. Dummy data is made once (a small
synthetic nation through the real pipeline, `gpdpr.tre.dummy`) in the background; the page shows
where it has got to and refreshes itself (a plain meta refresh: no JavaScript needed). A dummy
run's failure shows the definition's own error, or a fixed message: never text from the engine,
which could echo what the definition made it read.

A real run's page shows its outputs inside the environment, each as a table, as
`visible_outputs` hands them out (controlled files, and none that could be subtracted from what
the person has already seen); nothing else about the data: no sizes or row counts, and for a run
that stopped, its status and a fixed message (why a run stopped can depend on the data). A
refusal by the agreement, which cannot, is shown when the run is asked for.
"""

from __future__ import annotations

import re
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gpdpr.db.models import now
from gpdpr.errors import UserError
from gpdpr.governance import people
from gpdpr.governance.agreements import authorise, in_force
from gpdpr.governance.models import Agreement, TeamMember
from gpdpr.portal.outputs import FileView, chosen_page, file_view
from gpdpr.portal.pages import not_found, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import GuardedRoute, allow, staff_session
from gpdpr.terminology import store
from gpdpr.tre import runs, views
from gpdpr.tre.models import ReleaseRequest, Run
from gpdpr.tre.query import codelists, nodes, serial
from gpdpr.tre.release import checking

router = APIRouter(route_class=GuardedRoute)
_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_UPLOAD = 2_000_000
DUMMY_PATIENTS = 2_500


def definitions_folder(home: Path, person_id: int) -> Path:
    return home / "portal" / "definitions" / str(person_id)


def _person_id(request: Request) -> int:
    handle = staff_session(request).handle
    assert handle is not None
    return portal_of(request).read(lambda s: people.person(s, handle).id)


# ---- dummy runs in the background ---------------------------------------------------------------


@dataclass
class DummyJob:
    status: str = "queued"  # queued, making dummy data, running, done, failed
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # file -> CSV text (synthetic data)
    population: int | None = None


class DummyRunner:
    """Dummy-data runs, one thread each; the dummy lake is made once, under a lock."""

    def __init__(self, folder: Path, patients: int = DUMMY_PATIENTS) -> None:
        self.folder = folder
        self.patients = patients
        self.jobs: dict[tuple[int, str], DummyJob] = {}
        self._making = threading.Lock()

    @property
    def making(self) -> threading.Lock:
        """Held while dummy data is made. Making it sets GPDPR_DATABASE_URL aside for a while
        (the dummy centre has a database of its own), so a real run, which reads that setting,
        waits for it."""
        return self._making

    def start(self, owner: int, sha: str, document: bytes) -> DummyJob:
        key = (owner, sha)
        job = self.jobs.get(key)
        if job is not None and job.status not in ("done", "failed"):
            return job
        job = DummyJob()
        self.jobs[key] = job
        threading.Thread(target=self._run, args=(job, document), daemon=True).start()
        return job

    def _run(self, job: DummyJob, document: bytes) -> None:
        from gpdpr.tre import dummy
        from gpdpr.tre.engines.duckdb import DuckDBEngine

        try:
            definition = serial.from_json(document)
        except UserError as exc:
            job.status, job.message = "failed", str(exc)  # the definition's own error
            return
        try:
            job.status = "making dummy data"
            with self._making:
                lake = dummy.ensure(self.folder, self.patients)
            job.status = "running"
            dummy_views = dummy.dummy_views(lake, nodes.columns_used(definition))
            results = DuckDBEngine().run(definition, dummy_views)
        except Exception as exc:  # the engine's text could echo what the definition read
            if not isinstance(exc, UserError):
                traceback.print_exc()
            job.status, job.message = "failed", DUMMY_FAILED
            return
        try:
            runs.refuse_empty(results)
        except UserError:
            job.status, job.message = "failed", DUMMY_EMPTY
            return
        try:
            outputs = runs.control(definition, results)
        except Exception as exc:
            if not isinstance(exc, UserError):
                traceback.print_exc()
            job.status, job.message = "failed", DUMMY_CONTROL
            return
        job.population = results.dataset.num_rows if results.dataset is not None else None
        job.outputs = {name: body.decode() for name, body in outputs.files.items()}
        job.status = "done"


DUMMY_FAILED = (
    "the engine stopped on this definition. Its own message is not shown here, because it "
    "could repeat what the definition made it read; run it on your machine with "
    "`gpdpr tre run study.py --dummy` to see it."
)
DUMMY_EMPTY = (
    "no dummy patient is in the population (or in any denominator of a measure). Check the "
    "conditions and the dates against what the dummy data holds."
)
DUMMY_CONTROL = (
    "the results could not be put through disclosure control; run it on your machine with "
    "`gpdpr tre run study.py --dummy` to see why."
)


def dummy_runner(request: Request) -> DummyRunner:
    found: DummyRunner = request.app.state.dummy
    return found


# ---- pages -----------------------------------------------------------------------------------


def _overview(session: Session, handle: str, home: Path) -> dict[str, Any]:
    me = people.person(session, handle)
    folder = definitions_folder(home, me.id)
    uploaded = sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []
    team_agreements = list(
        session.scalars(
            sa.select(Agreement)
            .join(TeamMember, TeamMember.application_id == Agreement.application_id)
            .where(TeamMember.person_id == me.id)
            .order_by(Agreement.id)
        )
    )
    stamp = now()
    usable = [
        (a.reference, a.application.title) for a in team_agreements if in_force(a, stamp) is None
    ]
    my_runs = checking.runs(session, handle)
    run_ids = [r.id for r in my_runs]
    requests = (
        list(
            session.scalars(
                sa.select(ReleaseRequest)
                .where(ReleaseRequest.run_id.in_(run_ids))
                .order_by(ReleaseRequest.id)
            )
        )
        if run_ids
        else []
    )
    return {
        "uploaded": uploaded,
        "agreements": usable,
        # No run's message: why a real run stopped can depend on the data.
        "runs": [(r.reference, r.agreement.reference, r.status, r.finished_at) for r in my_runs],
        "requests": [
            (q.reference, q.title, checking.STATE_WORDS[q.state], q.run.reference) for q in requests
        ],
    }


@router.get("/research")
@allow("applicant")
def research(request: Request) -> Response:
    handle = staff_session(request).handle
    assert handle is not None
    portal = portal_of(request)
    return render(
        request, "research.html.j2", **portal.read(lambda s: _overview(s, handle, portal.home))
    )


@router.post("/research/definitions")
@allow("applicant")
async def upload(request: Request) -> Response:
    data = await request.form()
    upload = data.get("definition")
    portal = portal_of(request)
    handle = staff_session(request).handle
    assert handle is not None
    error = None
    document = b""
    if upload is None or isinstance(upload, str) or not upload.filename:
        error = "Choose the definition file to upload (the JSON that gpdpr tre compile writes)."
    else:
        document = await upload.read(MAX_UPLOAD + 1)
        if len(document) > MAX_UPLOAD:
            error = f"The file is larger than {MAX_UPLOAD:,} bytes: it is not a definition."
    if error is None:
        try:
            await run_in_threadpool(serial.from_json, document)
        except UserError as exc:
            error = f"That definition cannot be accepted: {exc}"
    if error is not None:
        overview = portal.read(lambda s: _overview(s, handle, portal.home))
        return render(request, "research.html.j2", status_code=400, errors=[error], **overview)
    sha = serial.sha256(document)
    folder = definitions_folder(portal.home, _person_id(request))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha}.json"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(document)
    partial.replace(path)
    staff_session(request).flash.append(
        "The definition is checked and kept. Try it on dummy data first."
    )
    return RedirectResponse(f"/research/definitions/{sha}", status_code=303)


def _document(request: Request, sha: str) -> bytes | None:
    if not _SHA.match(sha):
        return None
    path = definitions_folder(portal_of(request).home, _person_id(request)) / f"{sha}.json"
    return path.read_bytes() if path.is_file() else None


def _definition_page(
    request: Request,
    sha: str,
    document: bytes,
    status_code: int = 200,
    errors: list[str] | None = None,
) -> Response:
    definition = serial.from_json(document)
    handle = staff_session(request).handle
    assert handle is not None
    portal = portal_of(request)
    overview = portal.read(lambda s: _overview(s, handle, portal.home))
    job = dummy_runner(request).jobs.get((_person_id(request), sha))
    return render(
        request,
        "definition.html.j2",
        status_code=status_code,
        sha=sha,
        used={t: sorted(c) for t, c in sorted(nodes.columns_used(definition).items())},
        codelists=codelists.shown(definition),
        release=store.active(),
        job=job,
        agreements=overview["agreements"],
        refresh=job is not None and job.status not in ("done", "failed"),
        errors=errors or [],
    )


@router.get("/research/definitions/{sha}")
@allow("applicant")
def definition(request: Request, sha: str) -> Response:
    document = _document(request, sha)
    if document is None:
        return not_found(request)
    return _definition_page(request, sha, document)


@router.post("/research/definitions/{sha}/dummy")
@allow("applicant")
def run_dummy(request: Request, sha: str) -> Response:
    document = _document(request, sha)
    if document is None:
        return not_found(request)
    dummy_runner(request).start(_person_id(request), sha, document)
    return RedirectResponse(f"/research/definitions/{sha}#dummy", status_code=303)


@router.post("/research/definitions/{sha}/run")
@allow("applicant")
async def run_real(request: Request, sha: str) -> Response:
    data = await request.form()
    document = _document(request, sha)
    if document is None:
        return not_found(request)
    agreement = str(data.get("agreement", ""))
    who = staff_session(request)
    assert who.handle is not None
    portal = portal_of(request)

    def submit() -> runs.RunRecord:
        with dummy_runner(request).making, portal.writing():
            return runs.submit(portal.home, str(who.handle), agreement, document)

    try:
        made = await run_in_threadpool(submit)
    except UserError:
        why = portal.read(lambda s: _refused_before_data(s, str(who.handle), agreement, document))
        return _definition_page(request, sha, document, 400, [why or RUN_STOPPED])
    who.flash.append(
        f"{made.reference} ran on lake version {made.lake_version}. Its outputs wait inside, "
        "controlled, until two output checkers release them: ask for them below."
    )
    return RedirectResponse(f"/research/runs/{made.reference}", status_code=303)


RUN_STOPPED = (
    "The run stopped inside the research environment and made no outputs. Why is not shown, "
    "because it could depend on the data; the service's staff can read it in the run's record. "
    "Try the definition on dummy data to find the problem."
)
RUN_WORDS = {
    "succeeded": "Succeeded: its outputs are below, after disclosure control.",
    "refused": "Refused: it made no outputs. Why is not shown here, because it could depend on "
    "the data; a refusal by the agreement was shown when the run was asked for.",
    "failed": "Failed: it made no outputs. Why is not shown here, because it could depend on the "
    "data; try the definition on dummy data.",
}
WITHHELD = (
    "Withheld: it could be subtracted from results you have seen (differencing risk). "
    "It is kept inside; it can still be asked for, and the checks then decide."
)


def _refused_before_data(
    session: Session, handle: str, agreement: str, document: bytes
) -> str | None:
    """Why a run is refused before any data is read (the definition itself, or the agreement:
    who, when and which fields), asked again after a run stopped; None if neither refuses it,
    so whatever stopped the run came later and is not for the page."""
    try:
        definition = serial.from_json(document)
        authorise(session, handle, agreement, views.required_fields(nodes.columns_used(definition)))
    except UserError as exc:
        return str(exc)
    return None


def visible_outputs(
    session: Session, home: Path, handle: str, run_ref: str
) -> dict[str, bytes | None]:
    """The run's outputs as its team may see them inside the environment
    (`runs.visible_outputs`: each controlled file, or None where it could be subtracted from
    what this person's organisation has seen or anyone has released; what is shown is
    remembered). Nothing once the agreement is no longer in force."""
    try:
        return runs.visible_outputs(session, home, handle, run_ref)
    except UserError:
        return {}


def _my_run(session: Session, handle: str, reference: str) -> Run | None:
    return next((r for r in checking.runs(session, handle) if r.reference == reference), None)


def _run_page(
    request: Request, reference: str, status_code: int = 200, errors: list[str] | None = None
) -> Response:
    handle = staff_session(request).handle
    assert handle is not None
    portal = portal_of(request)

    def find(s: Session) -> dict[str, Any] | None:
        run = _my_run(s, handle, reference)
        if run is None:
            return None
        # Only what does not depend on the data, and the controlled files themselves.
        return {
            "run": {
                "reference": run.reference,
                "status": run.status,
                "lake_version": run.lake_version,
                "definition_sha256": run.definition_sha256,
                "names": sorted(run.outputs) if run.status == "succeeded" else [],
            },
            "said": RUN_WORDS[run.status],
            "agreement": run.agreement.reference,
            "project": run.agreement.application.reference,
            "visible": visible_outputs(s, portal.home, handle, reference),
        }

    shown = portal.act(find)  # showing outputs is remembered, for the differencing check
    if shown is None:
        return not_found(request)
    chosen, page = chosen_page(request)
    outputs: list[FileView] = []
    for name, body in shown.pop("visible").items():
        if body is None:
            outputs.append(FileView(name, problem=WITHHELD))
        else:
            outputs.append(file_view(name, body, None, page if name == chosen else 1))
    return render(
        request,
        "run.html.j2",
        status_code=status_code,
        errors=errors or [],
        outputs=outputs,
        **shown,
    )


@router.get("/research/runs/{reference}")
@allow("applicant")
def show_run(request: Request, reference: str) -> Response:
    return _run_page(request, reference)


@router.post("/research/runs/{reference}/request")
@allow("applicant")
async def request_release(request: Request, reference: str) -> Response:
    import hashlib

    data = await request.form()
    who = staff_session(request)
    handle = who.handle
    assert handle is not None
    portal = portal_of(request)
    if portal.read(lambda s: _my_run(s, handle, reference)) is None:
        return not_found(request)
    names = [str(n) for n in data.getlist("files")]
    title, description = str(data.get("title", "")), str(data.get("description", ""))
    folder = runs.run_folder(portal.home, reference) / runs.OUTPUTS

    def ask(s: Session) -> str:
        if not names:
            raise UserError("choose at least one output file to release")
        run = _my_run(s, handle, reference)
        assert run is not None
        found: dict[str, tuple[str, int]] = {}
        for name in names:
            # The name as the run recorded it: what was typed never becomes a path.
            known = next((k for k in sorted(run.outputs) if k == name), None)
            path = None if known is None else folder / known
            if known is None or path is None or not path.is_file():
                raise UserError(f"{reference} has no output {name!r}")
            body = path.read_bytes()
            found[known] = (hashlib.sha256(body).hexdigest(), len(body))
        cells = runs.cells_of(portal.home, reference, set(found))
        made = checking.request_release(s, handle, reference, found, title, description, cells)
        return made.reference

    try:
        made = await run_in_threadpool(portal.act, ask)
    except UserError as exc:
        return _run_page(request, reference, 400, [str(exc)])
    who.flash.append(f"{made}: your request waits for two output checkers.")
    return RedirectResponse(f"/research/requests/{made}", status_code=303)


@router.get("/research/requests/{reference}")
@allow("applicant")
def show_my_request(request: Request, reference: str) -> Response:
    handle = staff_session(request).handle
    assert handle is not None

    def find(s: Session) -> dict[str, Any] | None:
        found = s.scalar(sa.select(ReleaseRequest).where(ReleaseRequest.reference == reference))
        if found is None or _my_run(s, handle, found.run.reference) is None:
            return None
        return {"shown": checking.show_request(s, reference), "words": checking.STATE_WORDS}

    shown = portal_of(request).read(find)
    if shown is None:
        return not_found(request)
    return render(request, "my_request.html.j2", **shown)
