"""Output checking: the release requests an output checker may review, each file by file, with
approve, reject or return (with comments). When every file has two approvals the request is
released: its files and definition are published on the register and the register is written
again, as `gpdpr tre review approve` does.

Checkers see what they approve: each file as a table, a page of rows at a time, read from the
run's outputs and checked against the SHA-256 it was asked for with; each cell with its status
from disclosure control (published, rounded, redacted, suppressed) and why; and, for a measure,
a chart of its rate per interval. `file_view` builds that view (the research pages use it for a
run's outputs too, without statuses).

A checker sees only the requests they may check (not their own, not their project's, not their
organisation's, not those of any organisation on the application) and those they have already
reviewed; anything else is "nothing here".
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gpdpr.errors import UserError
from gpdpr.governance import people, register
from gpdpr.portal import charts
from gpdpr.portal.pages import not_found, render
from gpdpr.portal.public import portal_of
from gpdpr.portal.security import GuardedRoute, allow, staff_session
from gpdpr.tre.models import ReleaseRequest
from gpdpr.tre.release import checking

router = APIRouter(route_class=GuardedRoute)

PAGE_ROWS = 100  # rows of a file shown at once: a monthly measure by practice has thousands
MEASURE_COLUMNS = ("measure", "interval_start", "interval_end", "numerator", "denominator", "ratio")


# ---- a file as a table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """One cell of a shown table: its text as published, and what disclosure control did."""

    value: str
    status: str | None = None
    note: int | None = None  # the number of its reason in FileView.reasons


@dataclass(frozen=True)
class FileView:
    name: str
    problem: str | None = None  # why the file cannot be shown (then nothing else is set)
    header: list[str] = field(default_factory=list)
    rows: list[tuple[int, list[Shown]]] = field(default_factory=list)  # (row number, cells)
    total: int = 0  # data rows in the file
    page: int = 1
    pages: int = 1
    reasons: list[tuple[int, str, str]] = field(default_factory=list)  # (note, status, reason)
    statuses: dict[str, int] | None = None  # cells of the whole file by status
    off_table: dict[str, int] = field(default_factory=dict)  # cells with no place in the table
    chart: str | None = None  # SVG, for a measure
    chart_note: str = ""


def file_view(
    name: str, body: bytes, cells: Sequence[checking.CellStatus] | None, page: int = 1
) -> FileView:
    """`body` (a CSV the run wrote) as a table: page `page` of it (PAGE_ROWS rows), with each
    cell's status where `cells` gives one, and a chart of the rate per interval if the file is
    a measure. Every row is read once (for the count and the chart); only the page is kept."""
    reader = csv.reader(io.StringIO(body.decode("utf-8", errors="replace"), newline=""))
    header = next(reader, [])
    first = (max(1, page) - 1) * PAGE_ROWS + 1
    kept: list[tuple[int, list[str]]] = []
    chart = _RateChart(header) if name.startswith("measure_") else None
    total = 0
    for total, row in enumerate(reader, 1):
        if first <= total < first + PAGE_ROWS:
            kept.append((total, row))
        if chart is not None:
            chart.add(row)
    pages = max(1, -(-total // PAGE_ROWS))
    if page > pages:
        return file_view(name, body, cells, pages)
    by_place = {(c.row, c.column): c for c in cells or []}
    reasons: dict[tuple[str, str], int] = {}
    rows: list[tuple[int, list[Shown]]] = []
    for number, values in kept:
        shown: list[Shown] = []
        for column, value in zip(header, values, strict=False):
            cell = by_place.get((number, column))
            if cell is None:
                shown.append(Shown(value))
                continue
            note = None
            if cell.reason:
                note = reasons.setdefault((cell.status, cell.reason), len(reasons) + 1)
            shown.append(Shown(value, cell.status, note))
        rows.append((number, shown))
    columns = set(header)
    off_table = Counter(
        c.status for c in cells or [] if not 1 <= c.row <= total or c.column not in columns
    )
    return FileView(
        name,
        header=header,
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        reasons=[(n, status, reason) for (status, reason), n in reasons.items()],
        statuses=None if cells is None else checking.count_statuses(cells),
        off_table=dict(off_table),
        chart=None if chart is None else chart.svg(name),
        chart_note="" if chart is None else chart.note(),
    )


class _RateChart:
    """The rate per interval of a measure file, one line per group (the first few groups)."""

    def __init__(self, header: list[str]) -> None:
        self.at = {c: header.index(c) for c in ("interval_start", "ratio") if c in header}
        self.groups = [i for i, c in enumerate(header) if c not in MEASURE_COLUMNS]
        self.header = header
        self.series: dict[str, dict[str, float | None]] = {}
        self.seen: set[str] = set()
        self.intervals: set[str] = set()

    def add(self, row: list[str]) -> None:
        if len(self.at) < 2 or len(row) != len(self.header):
            return
        group = "; ".join(f"{self.header[i]} {row[i]}" for i in self.groups) or "everyone"
        interval = row[self.at["interval_start"]]
        self.seen.add(group)
        self.intervals.add(interval)
        if group in self.series or len(self.series) < len(charts.PALETTE):
            self.series.setdefault(group, {})[interval] = _rate(row[self.at["ratio"]])

    def svg(self, name: str) -> str | None:
        if len(self.at) < 2:
            return None
        labels = sorted(self.intervals)
        rates = [charts.Rates(g, [by.get(i) for i in labels]) for g, by in self.series.items()]
        return charts.both(
            lambda width: charts.lines(f"{name}: rate per interval", labels, rates, width=width)
        )

    def note(self) -> str:
        if len(self.at) < 2:
            return "No chart: the file has no interval_start and ratio columns."
        if len(self.seen) > len(self.series):
            return (
                f"The chart shows the first {len(self.series)} of {len(self.seen)} groups; "
                "the table has every row."
            )
        return ""


def _rate(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def request_views(
    home: Path, run_reference: str, files: list[dict[str, Any]], chosen: str, page: int
) -> list[FileView]:
    """Each file of a request, as the run wrote it and as it was asked for: a file that changed
    since (or went missing) is named as such, not shown."""
    from gpdpr.tre.runs import OUTPUTS, run_folder

    folder = run_folder(home, run_reference) / OUTPUTS
    views: list[FileView] = []
    for f in files:
        path = folder / f["name"]  # a name from the database, checked when it was asked for
        body = path.read_bytes() if path.is_file() else None
        if body is None:
            views.append(FileView(f["name"], problem="The file is missing from the run's outputs."))
        elif hashlib.sha256(body).hexdigest() != f["sha256"]:
            views.append(
                FileView(
                    f["name"],
                    problem="The file changed after it was asked for, so it cannot be released "
                    "as it is: reject the request.",
                )
            )
        else:
            views.append(file_view(f["name"], body, f["cells"], page if chosen == f["name"] else 1))
    return views


def chosen_page(request: Request) -> tuple[str, int]:
    """The file (?file=) whose page (?page=) is asked for; page 1 for anything unreadable."""
    name = request.query_params.get("file", "")
    try:
        page = int(request.query_params.get("page", "1"))
    except ValueError:
        page = 1
    return name, max(1, min(page, 1_000_000))


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
    home = portal_of(request).home

    def find(s: Session) -> dict[str, Any] | None:
        found = checkable(s, handle, reference)
        if found is None:
            return None
        shown = checking.show_request(s, reference, home)
        mine = {f["name"] for f in shown["files"] for r in f["reviews"] if r["checker"] == handle}
        return {"shown": shown, "reviewed": mine, "words": checking.STATE_WORDS}

    found = portal_of(request).read(find)
    if found is None:
        return None
    chosen, page = chosen_page(request)
    shown = found["shown"]
    found["views"] = request_views(home, shown["run"]["reference"], shown["files"], chosen, page)
    found["statuses"] = checking.CELL_STATUSES
    return found


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
