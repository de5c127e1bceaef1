"""Output checking: a run's files leave the research environment only through a release request
that two output checkers approve file by file, neither the author, on the project's team, from
the author's organisation, nor from any organisation the application names (lead, collaborator,
funder); a rejection or a return ends it, and the file turned down cannot be asked for again
unchanged; a release that could be subtracted from what was released or shown before is refused
with the files named; checkers see each cell's status and never its raw count; the released files
are published on the register with the definition that made them, and a file changed since it
was checked is never published. On SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from databases import BACKENDS, postgres_url
from governing import (
    ADMIN,
    BOTH,
    CHARITY,
    CHECKERS,
    COLLEAGUE,
    LEAD,
    PANEL,
    PHARMA,
    VENDOR,
    act,
    agreement_of,
    bring_to,
    cast,
    later,
    new_draft,
    snapshot,
    votes,
)
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.db.models import Event
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import agreements, applications, panel, people, register, releases
from gpdpr.governance.models import Person, Release
from gpdpr.terminal import console
from gpdpr.tre.models import FileReview, ReleaseRequest, Run, SeenCell
from gpdpr.tre.release import checking
from gpdpr.tre.release.differencing import DifferencingRisk
from gpdpr.tre.release.disclosure import Cell
from gpdpr.tre.review_cli import review_app

DEFINITION = orjson.dumps(
    {"population": {"age_on": "2025-01-01", "min": 18}, "variables": ["sex"], "version": 1},
    option=orjson.OPT_SORT_KEYS,
).decode()
DEFINITION_SHA = hashlib.sha256(DEFINITION.encode()).hexdigest()
TABLE = b"sex,patients\nF,120\nM,95\nU,\n"
MEASURE = b"month,numerator,denominator\n2025-01,40,200\n"
THIRD_CHECKER = "k.three"


# ---- helpers -----------------------------------------------------------------------------------


def refused(engine: sa.Engine, do: Any, *words: str) -> str:
    """Run `do`, which must be refused with a message holding `words`, changing nothing."""
    before = snapshot(engine)
    with pytest.raises(UserError) as error:
        act(engine, do)
    message = str(error.value)
    for word in words:
        assert word in message, message
    assert snapshot(engine) == before
    return message


def events(engine: sa.Engine, kind: str | None = None) -> list[Event]:
    with Session(engine) as session:
        query = sa.select(Event).order_by(Event.id)
        if kind is not None:
            query = query.where(Event.kind == kind)
        return list(session.scalars(query))


def outputs_of(files: dict[str, bytes], rows: int = 3) -> dict[str, dict[str, Any]]:
    return {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows}
        for name, data in files.items()
    }


def asked(files: dict[str, bytes]) -> dict[str, tuple[str, int]]:
    return {name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in files.items()}


def cells(file: str = "table.csv", female: int = 120) -> list[Cell]:
    return [
        Cell(file, 1, "patients", "f" * 64, female, True, "rounded", "rounded to the nearest 5"),
        Cell(file, 2, "patients", "e" * 64, 95, True, "rounded", "rounded to the nearest 5"),
        Cell(file, None, "patients", "d" * 64, 4, False, "suppressed", "a small group"),
    ]


def new_run(
    engine: sa.Engine,
    dsa: str,
    files: dict[str, bytes] | None = None,
    by: str = LEAD,
    status: str = "succeeded",
    home: Path | None = None,
) -> str:
    """A run recorded as the research environment records one (its files written under `home`
    when given, where the review commands publish them from)."""
    files = {"table.csv": TABLE} if files is None else files
    started = later(0)
    run = act(
        engine,
        lambda s: checking.record_run(
            s, by, dsa, DEFINITION, DEFINITION_SHA, 7, "duckdb", "round5", status,
            "" if status == "succeeded" else "outside the agreement", outputs_of(files),
            started, started,
        ),
    )  # fmt: skip
    reference: str = run.reference
    if home is not None:
        folder = home / "tre" / "runs" / reference / "outputs"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return reference


def new_request(
    engine: sa.Engine,
    run: str,
    files: dict[str, bytes] | None = None,
    by: str = LEAD,
    given: list[Cell] | None = None,
    title: str = "Patients by sex",
) -> str:
    files = {"table.csv": TABLE} if files is None else files
    reference: str = act(
        engine,
        lambda s: (
            checking.request_release(
                s, by, run, asked(files), title, "Table 1", cells() if given is None else given
            ).reference
        ),
    )
    return reference


def review(
    engine: sa.Engine, checker: str, request: str, file: str = "table.csv", comment: str = ""
) -> str:
    """An approval (or, with a comment starting 'reject:'/'return:', that decision); the
    request's state afterwards."""
    decision = "approve"
    for word in ("reject", "return"):
        if comment.startswith(f"{word}:"):
            decision = word
    state: str = act(
        engine, lambda s: checking.review(s, checker, request, file, decision, comment).state
    )
    return state


def approve(engine: sa.Engine, checker: str, request: str, file: str = "table.csv") -> Any:
    return lambda s: checking.review(s, checker, request, file, "approve")


def agreement_for(engine: sa.Engine, lead: str = LEAD, **changes: Any) -> str:
    """An agreement in force for a new application led by `lead` with `changes` to the form."""
    reference = new_draft(engine, lead, **changes)
    act(engine, lambda s: applications.submit(s, lead, reference))
    act(engine, lambda s: panel.start_review(s, ADMIN, reference))
    votes(engine, reference)
    act(engine, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    return act(engine, lambda s: agreements.issue(s, ADMIN, reference).reference)


def in_force(engine: sa.Engine) -> str:
    dsa = agreement_of(engine, bring_to(engine, "agreement_active"))
    assert dsa
    return dsa


def third_checker(engine: sa.Engine) -> None:
    act(
        engine,
        lambda s: people.add_person(
            s, ADMIN, THIRD_CHECKER, "K Three", "k3@example.org", None, ["output_checker"]
        ),
    )


def rows(engine: sa.Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(model).order_by(model.id)))


# ---- releasing ---------------------------------------------------------------------------------


def test_two_approvals_on_every_file_release_the_request(gov: sa.Engine) -> None:
    third_checker(gov)
    dsa = in_force(gov)
    files = {"table.csv": TABLE, "measure.csv": MEASURE}
    run = new_run(gov, dsa, files)
    request = new_request(gov, run, files, given=[*cells(), *cells("other.csv", 300)])
    assert review(gov, CHECKERS[0], request, "table.csv") == "awaiting_review"
    assert review(gov, CHECKERS[1], request, "table.csv") == "awaiting_review"
    assert review(gov, CHECKERS[1], request, "measure.csv") == "awaiting_review"
    assert not rows(gov, Release)
    # the second file's second approval comes from a third checker: the release names the
    # first two distinct approvers, and each file keeps its own
    assert review(gov, THIRD_CHECKER, request, "measure.csv") == "released"

    [release] = rows(gov, Release)
    assert release.run_reference == run
    assert release.lake_version == 7
    assert release.definition == DEFINITION
    assert release.code_sha256 == DEFINITION_SHA
    assert release.files == {k: v[0] for k, v in asked(files).items()}
    [made] = rows(gov, ReleaseRequest)
    assert (made.state, made.release_id) == ("released", release.id)
    assert made.decided_at is not None
    with Session(gov) as session:
        checkers = session.scalars(
            sa.select(Person.handle).where(
                Person.id.in_([release.first_checker_id, release.second_checker_id])
            )
        )
        assert sorted(checkers) == [CHECKERS[0], CHECKERS[1]]
    assert release.first_checker_id < release.second_checker_id  # k.one approved first
    # the cells of the requested files are kept as released, with their raw counts
    kept = {(c.file, c.key[0], c.raw, c.published, c.released) for c in rows(gov, SeenCell)}
    assert kept == {
        ("table.csv", "f", 120, True, True),
        ("table.csv", "e", 95, True, True),
        ("table.csv", "d", 4, False, True),
    }

    # the public record: every step, and no personal data
    [ran] = events(gov, "tre.run")
    assert ran.details == {
        "run": run,
        "project": ran.details["project"],
        "agreement": dsa,
        "definition_sha256": DEFINITION_SHA,
        "lake_version": 7,
        "engine": "duckdb",
        "status": "succeeded",
    }
    assert ran.details["project"].startswith("APP-")
    assert [e.details["request"] for e in events(gov, "release.requested")] == [request]
    reviewed = [(e.details["file"], e.details["checker"]) for e in events(gov, "release.reviewed")]
    assert reviewed == [
        ("table.csv", CHECKERS[0]),
        ("table.csv", CHECKERS[1]),
        ("measure.csv", CHECKERS[1]),
        ("measure.csv", THIRD_CHECKER),
    ]
    [published] = events(gov, "release.published")
    assert published.details["run"] == run and published.details["lake_version"] == 7
    assert "@" not in repr([(e.actor, e.details) for e in events(gov)])
    assert "120" not in repr([e.details for e in events(gov)])  # no raw count is published

    # the register shows each file with its own checkers, the run, the lake version and the
    # definition
    with Session(gov) as session:
        entry = next(a for a in register.build(session)["agreements"] if a["agreement"] == dsa)
        shown = checking.show_request(session, request)
    [listed] = entry["releases"]
    assert (listed["run"], listed["lake_version"]) == (run, 7)
    assert listed["definition"] == {
        "sha256": DEFINITION_SHA,
        "href": f"releases/{release.id}/definition.json",
    }
    by_file = {f["name"]: f for f in listed["published"]}
    assert by_file["table.csv"]["checked_by"] == ["K One", "K Two"]
    assert by_file["measure.csv"]["checked_by"] == ["K Two", "K Three"]
    assert by_file["measure.csv"]["href"] == f"releases/{release.id}/measure.csv"
    assert [f["approvals"] for f in shown["files"]] == [2, 2]
    assert shown["state"] == "released" and shown["release"] == release.id
    assert "raw" not in repr(shown) and "cells" not in shown


def test_the_author_cannot_check_their_own_outputs(gov: sa.Engine) -> None:
    # BOTH is an applicant and an output checker from Leeds: here they lead the project
    dsa = agreement_for(gov, lead=BOTH, team=(COLLEAGUE,))
    request = new_request(gov, new_run(gov, dsa, by=BOTH), by=BOTH)
    refused(gov, approve(gov, BOTH, request), f"{BOTH} cannot check {request}", "author")


def test_a_team_member_cannot_check_their_projects_outputs(gov: sa.Engine) -> None:
    dsa = agreement_for(gov, team=(COLLEAGUE, BOTH))
    request = new_request(gov, new_run(gov, dsa))
    refused(gov, approve(gov, BOTH, request), "on the team of APP-", "own project")


def test_a_checker_from_the_authors_organisation_cannot_check(gov: sa.Engine) -> None:
    request = new_request(gov, new_run(gov, in_force(gov)))  # BOTH is on no team here
    refused(
        gov,
        approve(gov, BOTH, request),
        "belong to University of Leeds, as does the author a.khan",
        "outside the author's organisation",
    )
    refused(gov, approve(gov, PANEL[0], request), "output checker role")


def test_the_release_itself_refuses_a_checker_from_the_requesters_organisation(
    gov: sa.Engine,
) -> None:
    dsa = in_force(gov)
    refused(
        gov,
        lambda s: releases.record_release(
            s, dsa, LEAD, (BOTH, CHECKERS[0]), "Title", "", DEFINITION_SHA, {"t.csv": "ab" * 32},
            run_reference="RUN-000001", lake_version=1, definition=DEFINITION,
        ),
        "outside the author's organisation",
    )  # fmt: skip
    refused(
        gov,
        lambda s: releases.record_release(
            s, dsa, LEAD, CHECKERS, "Title", "", "ab" * 32, {"t.csv": "ab" * 32},
            run_reference="RUN-000001", lake_version=1, definition=DEFINITION,
        ),
        "not the SHA-256 of the definition",
    )  # fmt: skip


def test_each_checker_reviews_each_file_once(gov: sa.Engine) -> None:
    request = new_request(gov, new_run(gov, in_force(gov)))
    review(gov, CHECKERS[0], request)
    refused(gov, approve(gov, CHECKERS[0], request), "already reviewed table.csv")
    refused(
        gov,
        lambda s: checking.review(s, CHECKERS[0], request, "table.csv", "reject", "too small"),
        "already reviewed",
    )
    refused(gov, approve(gov, CHECKERS[1], request, "other.csv"), "no file 'other.csv'")
    refused(gov, approve(gov, CHECKERS[1], "REQ-999999"), "no release request")
    refused(
        gov,
        lambda s: checking.review(s, CHECKERS[1], request, "table.csv", "maybe"),
        "one of approve, reject, return",
    )


@pytest.mark.parametrize(("decision", "state"), [("reject", "rejected"), ("return", "returned")])
def test_reject_and_return_need_a_comment_and_end_the_request(
    gov: sa.Engine, decision: str, state: str
) -> None:
    third_checker(gov)
    request = new_request(gov, new_run(gov, in_force(gov)))
    review(gov, CHECKERS[0], request)
    refused(
        gov,
        lambda s: checking.review(s, CHECKERS[1], request, "table.csv", decision, "  "),
        "comment",
    )
    assert review(gov, CHECKERS[1], request, comment=f"{decision}: row 3 is too small") == state
    refused(gov, approve(gov, THIRD_CHECKER, request), f"{request} is ", "nothing more to review")
    [made] = rows(gov, ReleaseRequest)
    assert made.state == state and made.release_id is None and made.decided_at is not None
    assert not rows(gov, Release) and not rows(gov, SeenCell)
    with Session(gov) as session:
        shown = checking.show_request(session, request)
    comments = [r["comment"] for r in shown["files"][0]["reviews"]]
    assert comments == ["", f"{decision}: row 3 is too small"]
    # the comment stays inside: the public record says only who decided what
    assert "row 3" not in repr([e.details for e in events(gov)])


# ---- what may be asked for ---------------------------------------------------------------------


def test_only_a_runs_own_unchanged_outputs_can_be_asked_for(gov: sa.Engine) -> None:
    dsa = in_force(gov)
    run = new_run(gov, dsa)

    def ask(files: dict[str, tuple[str, int]], by: str = LEAD, title: str = "T") -> Any:
        return lambda s: checking.request_release(s, by, run, files, title, "", cells())

    right = asked({"table.csv": TABLE})
    refused(gov, ask(asked({"secret.csv": TABLE})), "'secret.csv' is not an output of RUN-")
    refused(gov, ask(asked({"table.csv": TABLE + b"F,1\n"})), "is not the file RUN-", "changed")
    refused(gov, ask({}), "name at least one", "table.csv")
    refused(gov, ask(right, title=" "), "title")
    refused(gov, ask(right, by=VENDOR), "not named on its team")
    refused(gov, ask(right, by=CHECKERS[0]), "not named on its team")
    failed = new_run(gov, dsa, status="refused")
    message = refused(
        gov,
        lambda s: checking.request_release(s, LEAD, failed, right, "T", "", []),
        f"{failed} refused; only a succeeded run's outputs",
    )
    assert "outside the agreement" not in message  # why a run stopped can depend on the data
    refused(
        gov,
        lambda s: checking.request_release(s, LEAD, "RUN-999999", right, "T", "", []),
        "no run 'RUN-999999'",
    )
    # a colleague on the team may ask for the lead's run's outputs
    assert new_request(gov, run, by=COLLEAGUE).startswith("REQ-")


def test_no_request_under_a_revoked_or_ended_agreement(gov: sa.Engine) -> None:
    revoked = agreement_of(gov, bring_to(gov, "revoked"))
    assert revoked
    run = new_run(gov, revoked)  # a run is recorded whatever came of it
    right = asked({"table.csv": TABLE})
    refused(
        gov,
        lambda s: checking.request_release(s, LEAD, run, right, "T", "", cells()),
        "revoked",
    )
    run = new_run(gov, in_force(gov))
    refused(
        gov,
        lambda s: checking.request_release(s, LEAD, run, right, "T", "", cells(), later(400)),
        "ended on",
    )


def test_a_run_is_recorded_with_the_definition_it_ran(gov: sa.Engine) -> None:
    dsa = in_force(gov)
    outputs = outputs_of({"table.csv": TABLE})
    started = later(0)

    def record(**changes: Any) -> Any:
        args: dict[str, Any] = {
            "handle": LEAD,
            "agreement_ref": dsa,
            "definition_json": DEFINITION,
            "definition_sha256": DEFINITION_SHA,
            "lake_version": 7,
            "engine": "duckdb",
            "disclosure_rule": "round5",
            "status": "succeeded",
            "message": "",
            "outputs": outputs,
            "started_at": started,
            "finished_at": started,
        } | changes
        return lambda s: checking.record_run(s, **args)

    refused(gov, record(definition_sha256="ab" * 32), "not the SHA-256 of the definition")
    refused(gov, record(engine="sqlite"), "duckdb, spark")
    refused(gov, record(disclosure_rule="none"), "round5, midpoint6")
    refused(gov, record(outputs={"t.csv": {"sha256": "x"}}), "output 't.csv'")
    refused(gov, record(agreement_ref="DSA-1999-0001"), "no agreement")
    made = act(gov, record())
    assert re.fullmatch(r"RUN-\d{6}", made.reference)
    with Session(gov) as session:
        assert [r.reference for r in checking.runs(session, COLLEAGUE)] == [made.reference]
        assert checking.runs(session, VENDOR) == []
        assert session.scalars(sa.select(Run)).one().outputs == outputs


# ---- differencing ------------------------------------------------------------------------------


def test_a_release_that_differs_from_an_earlier_one_by_a_few_people_is_refused(
    gov: sa.Engine,
) -> None:
    dsa = in_force(gov)
    first = new_request(gov, new_run(gov, dsa))
    review(gov, CHECKERS[0], first)
    assert review(gov, CHECKERS[1], first) == "released"
    # the same table again, three more women: subtracting gives those three away
    again = new_run(gov, dsa)
    message = refused(
        gov,
        lambda s: checking.request_release(
            s, LEAD, again, asked({"table.csv": TABLE}), "Again", "", cells(female=123)
        ),
        "a differencing risk was found in table.csv",
    )
    assert "123" not in message and "120" not in message and "sex" not in message  # files only
    # the same counts again reveal nobody; a different project's release counts all the same
    # (it is public), and so does what the requester's organisation was shown
    assert new_request(gov, again).startswith("REQ-")
    elsewhere = new_run(gov, agreement_for(gov))
    refused(
        gov,
        lambda s: checking.request_release(
            s, LEAD, elsewhere, asked({"table.csv": TABLE}), "T", "", cells(female=123)
        ),
        "a differencing risk was found in table.csv",
    )


def test_two_requests_waiting_at_once_are_checked_against_each_other_on_release(
    gov: sa.Engine,
) -> None:
    dsa = in_force(gov)
    first = new_request(gov, new_run(gov, dsa))
    second = new_request(gov, new_run(gov, dsa), given=cells(female=125))  # nothing released yet
    for request in (first, second):
        review(gov, CHECKERS[0], request)
    assert review(gov, CHECKERS[1], first) == "released"
    with pytest.raises(DifferencingRisk, match=r"a differencing risk was found in table\.csv"):
        act(gov, approve(gov, CHECKERS[1], second))
    assert [r.state for r in rows(gov, ReleaseRequest)] == ["released", "awaiting_review"]
    assert review(gov, CHECKERS[1], second, comment="reject: differs from REQ 1") == "rejected"


def test_a_file_is_in_one_live_request_at_a_time(gov: sa.Engine) -> None:
    dsa = in_force(gov)
    run = new_run(gov, dsa, {"table.csv": TABLE, "measure.csv": MEASURE})
    first = new_request(gov, run)
    # the same file again while the first request waits, alone or beside another file
    refused(
        gov,
        lambda s: checking.request_release(
            s, LEAD, run, asked({"table.csv": TABLE}), "Again", "", cells()
        ),
        "table.csv",
        first,
        "awaiting review",
    )
    refused(
        gov,
        lambda s: checking.request_release(
            s, LEAD, run, asked({"measure.csv": MEASURE, "table.csv": TABLE}), "Both", "", cells()
        ),
        "table.csv",
        first,
    )
    # another file of the run can be asked for
    assert new_request(gov, run, {"measure.csv": MEASURE}, given=[]).startswith("REQ-")
    # once released the file needs no second release
    for checker in CHECKERS:
        review(gov, checker, first)
    refused(
        gov,
        lambda s: checking.request_release(
            s, LEAD, run, asked({"table.csv": TABLE}), "Again", "", cells()
        ),
        "table.csv",
        first,
        "released",
    )


@pytest.mark.parametrize(("decision", "words"), [("reject", "rejected"), ("return", "returned")])
def test_a_file_turned_down_cannot_come_back_unchanged(
    gov: sa.Engine, decision: str, words: str
) -> None:
    dsa = in_force(gov)
    first = new_request(gov, new_run(gov, dsa))
    review(gov, CHECKERS[0], first, comment=f"{decision}: row 3 is too small")
    # the same bytes: from the same run, from a new run, under another name, beside a new file,
    # by a colleague on the team, or under another agreement of the same lead
    other = agreement_for(gov)
    for run, files, by in (
        (new_run(gov, dsa), {"table.csv": TABLE}, LEAD),
        (new_run(gov, dsa, {"renamed.csv": TABLE}), {"renamed.csv": TABLE}, LEAD),
        (
            new_run(gov, dsa, {"table.csv": TABLE, "measure.csv": MEASURE}),
            {"table.csv": TABLE, "measure.csv": MEASURE},
            COLLEAGUE,
        ),
        (new_run(gov, other), {"table.csv": TABLE}, LEAD),
    ):
        name = next(n for n, data in files.items() if data == TABLE)
        message = refused(
            gov,
            lambda s, run=run, files=files, by=by, name=name: checking.request_release(
                s, by, run, asked(files), "Again", "", cells(name)
            ),
            f"{name} is, byte for byte, a file that was {words}",
            first,
            "cannot be asked for again unchanged",
            f"gpdpr tre review show {first}",
            "change the definition, run it again",
        )
        assert "row 3" not in message  # the checkers' comment is for the author's own page
    # a changed file is a new file
    changed = {"table.csv": TABLE.replace(b"95", b"100")}
    assert new_request(gov, new_run(gov, dsa, changed), changed).startswith("REQ-")


def test_a_checker_from_an_organisation_of_the_application_cannot_check(gov: sa.Engine) -> None:
    """The funder (or a collaborator) of a project is no independent checker of its outputs,
    whoever the author is."""
    for handle, organisation in (("k.funder", CHARITY), ("k.pharma", PHARMA)):

        def add(s: Session, h: str = handle, o: str = organisation) -> Person:
            return people.add_person(s, ADMIN, h, h, f"{h}@example.org", o, ["output_checker"])

        act(gov, add)
    dsa = agreement_for(gov, collaborators=(PHARMA,))  # funded by CHARITY, as every FORM is
    request = new_request(gov, new_run(gov, dsa))
    for handle, organisation, role in (
        ("k.funder", CHARITY, "a funder"),
        ("k.pharma", PHARMA, "a collaborator"),
    ):
        refused(
            gov,
            approve(gov, handle, request),
            f"{handle} cannot check {request}",
            f"they belong to {organisation}, {role} of APP-",
            "outside every organisation the application names",
        )
        with Session(gov) as session:
            assert checking.requests_awaiting(session, handle) == []
    # the same checkers may check a project their organisations are not on
    elsewhere = new_request(gov, new_run(gov, agreement_for(gov, funders=())))
    assert review(gov, "k.funder", elsewhere) == "awaiting_review"


def test_the_release_itself_refuses_a_checker_from_the_projects_funder(gov: sa.Engine) -> None:
    """The same rule where the release is recorded, so that no path to a release skips it."""
    act(
        gov,
        lambda s: people.add_person(
            s, ADMIN, "k.trust", "K Trust", "kt@example.org", CHARITY, ["output_checker"]
        ),
    )
    dsa = agreement_for(gov)  # funded by CHARITY, as every FORM is
    refused(
        gov,
        lambda s: releases.record_release(
            s, dsa, LEAD, ("k.trust", CHECKERS[0]), "Title", "", DEFINITION_SHA,
            {"t.csv": "ab" * 32}, run_reference="RUN-000001", lake_version=1,
            definition=DEFINITION,
        ),
        f"they belong to {CHARITY}, the project's funder",
    )  # fmt: skip


# ---- what checkers see of each cell -------------------------------------------------------------

CANARY_RAW = 987_654_321
CANARY_KEY = "c0ffee" * 10 + "abcd"


def test_cell_statuses_are_read_from_either_shape_without_raw_counts_or_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cells.json"
    old = [
        {"file": "t.csv", "row": 1, "column": "patients", "dims": "sex=F", "raw": CANARY_RAW,
         "released": True},
        {"file": "t.csv", "row": 2, "column": "patients", "dims": "sex=M", "raw": 3,
         "released": False},
        {"file": "other.csv", "row": 1, "column": "patients", "dims": "x", "raw": 1,
         "released": True},
    ]  # fmt: skip
    path.write_bytes(orjson.dumps(old))
    found = checking.cell_statuses(path, ["t.csv"])
    assert found == {
        "t.csv": [
            checking.CellStatus("t.csv", 1, "patients", "published", ""),
            checking.CellStatus("t.csv", 2, "patients", "redacted", ""),
        ]
    }
    new = [
        {"file": "t.csv", "row": r, "column": "patients", "raw": CANARY_RAW + r, "key": CANARY_KEY,
         "released": status in ("published", "rounded"), "status": status,
         "reason": f"because {status}"}
        for r, status in enumerate(checking.CELL_STATUSES, 1)
    ]  # fmt: skip
    path.write_bytes(orjson.dumps(new))
    found = checking.cell_statuses(path, ["t.csv", "absent.csv"])
    assert found is not None and found["absent.csv"] == []
    assert [(c.status, c.reason) for c in found["t.csv"]] == [
        (status, f"because {status}") for status in checking.CELL_STATUSES
    ]
    assert checking.count_statuses(found["t.csv"]) == dict.fromkeys(checking.CELL_STATUSES, 1)
    shown = repr(found)
    assert str(CANARY_RAW)[:6] not in shown and CANARY_KEY not in shown and "raw" not in shown
    assert checking.cell_statuses(tmp_path / "none.json", ["t.csv"]) is None
    # a status that is not one of the four is refused, not shown
    path.write_bytes(orjson.dumps([{**new[0], "status": "<b>fine</b>"}]))
    with pytest.raises(UserError, match="cell 1 is not a cell as disclosure control writes it"):
        checking.cell_statuses(path, ["t.csv"])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
_ENTRY = st.fixed_dictionaries(
    {"file": st.sampled_from(["t.csv", "u.csv"]) | _JSON},
    optional={
        "row": st.integers(-3, 50) | _JSON,
        "column": st.sampled_from(["patients", "numerator"]) | _JSON,
        "status": st.sampled_from(["published", "rounded", "redacted", "suppressed"]) | _JSON,
        "reason": st.text(max_size=20) | _JSON,
        "released": st.booleans() | _JSON,
        "raw": st.just(CANARY_RAW),
        "key": st.just(CANARY_KEY),
        "dims": st.just("CANARY-DIMS"),
    },
)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=8))
def test_whatever_cells_json_holds_a_checker_gets_statuses_or_a_clear_refusal(
    entries: list[dict[str, Any]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cells.json"
        path.write_bytes(orjson.dumps(entries))
        try:
            found = checking.cell_statuses(path, ["t.csv"])
        except UserError as refusal:
            assert "is not a cell as disclosure control writes it" in str(refusal)
            return
    assert found is not None
    for cell in found["t.csv"]:
        assert cell.status in checking.CELL_STATUSES and isinstance(cell.row, int)
    shown = repr(found)
    assert str(CANARY_RAW) not in shown and CANARY_KEY not in shown and "CANARY" not in shown


# ---- two checkers at once ----------------------------------------------------------------------


def test_two_checkers_approving_at_once_release_once_and_lose_no_review(gov: sa.Engine) -> None:
    request = new_request(gov, new_run(gov, in_force(gov)))
    first_reviewed = threading.Event()
    failures: list[BaseException] = []

    def first() -> None:
        try:
            with Session(gov) as session, session.begin():
                checking.review(session, CHECKERS[0], request, "table.csv", "approve")
                first_reviewed.set()
                time.sleep(0.5)  # still uncommitted while the second checker acts
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
            first_reviewed.set()

    def second() -> None:
        try:
            first_reviewed.wait()
            act(gov, approve(gov, CHECKERS[1], request))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(rows(gov, FileReview)) == 2
    assert len(rows(gov, Release)) == 1
    assert [r.state for r in rows(gov, ReleaseRequest)] == ["released"]


def test_a_stale_read_cannot_review_a_decided_request(gov: sa.Engine) -> None:
    request = new_request(gov, new_run(gov, in_force(gov)))
    with Session(gov, expire_on_commit=False) as stale:
        held = checking.request_of(stale, request)
        stale.commit()  # keep the object, as a long-lived page would
        review(gov, CHECKERS[0], request, comment="reject: no")
        with pytest.raises(NotAllowed, match="rejected: there is nothing more to review"):
            checking.review(stale, CHECKERS[1], request, "table.csv", "approve")
        stale.rollback()
        assert held.reference == request
    assert [r.decision for r in rows(gov, FileReview)] == ["reject"]


# ---- publishing --------------------------------------------------------------------------------


def released(engine: sa.Engine, home: Path, files: dict[str, bytes]) -> Release:
    run = new_run(engine, in_force(engine), files, home=home)
    request = new_request(engine, run, files, given=[])
    for name in files:
        for checker in CHECKERS:
            review(engine, checker, request, name)
    release: Release
    [release] = rows(engine, Release)
    return release


def everything_in(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_published_files_are_the_ones_checked_with_their_definition(
    gov: sa.Engine, tmp_path: Path
) -> None:
    files = {"table.csv": TABLE, "measure.csv": MEASURE}
    release = released(gov, tmp_path / "home", files)
    source = tmp_path / "home" / "tre" / "runs" / str(release.run_reference) / "outputs"
    out = tmp_path / "register"
    folder = checking.publish_files(release, source, out)
    assert folder == out / "releases" / str(release.id)
    assert everything_in(out) == {
        f"releases/{release.id}/table.csv": TABLE,
        f"releases/{release.id}/measure.csv": MEASURE,
        f"releases/{release.id}/definition.json": DEFINITION.encode(),
    }
    assert hashlib.sha256((folder / "definition.json").read_bytes()).hexdigest() == (
        release.code_sha256
    )
    # publishing again (say the record failed to commit the first time) gives the same folder
    checking.publish_files(release, source, out)
    published = everything_in(out)

    # a file changed after it was checked: refused, and nothing published is lost or half-made
    (source / "measure.csv").write_bytes(MEASURE.replace(b"40", b"41"))
    with pytest.raises(NotAllowed, match=r"measure\.csv changed after it was checked"):
        checking.publish_files(release, source, out)
    assert everything_in(out) == published
    assert [p.name for p in (out / "releases").iterdir()] == [str(release.id)]
    (source / "measure.csv").unlink()
    with pytest.raises(UserError, match=r"measure\.csv is missing"):
        checking.publish_files(release, source, out)
    assert everything_in(out) == published


# ---- the review commands -----------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def home(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A service home with the governance cast, its record in the home's SQLite file, or on
    PostgreSQL in a schema of its own (GPDPR_DATABASE_URL)."""
    monkeypatch.setattr(console, "_width", 200)
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    folder = tmp_path / "home"
    folder.mkdir()
    if request.param == "sqlite":
        yield folder
        return
    with postgres_url() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        yield folder


@pytest.fixture
def engine(home: Path) -> Iterator[sa.Engine]:
    made = connect(url_for_home(home))
    cast(made)
    yield made
    made.dispose()


def tre(home: Path, *args: str) -> Result:
    return CliRunner().invoke(review_app, [*args, "--home", str(home)])


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def refused_cli(result: Result, *messages: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr carrying each of `messages`."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


def test_the_review_commands_from_request_to_the_register(home: Path, engine: sa.Engine) -> None:
    files = {"table.csv": TABLE, "measure.csv": MEASURE}
    dsa = in_force(engine)
    run = new_run(engine, dsa, files, home=home)
    request = new_request(engine, run, files, title="<b>Checks</b> & deciles")
    returned = new_request(engine, new_run(engine, dsa, home=home))

    listed = ok(tre(home, "requests"))
    assert request in listed and returned in listed and "awaiting review" in listed
    waiting = ok(tre(home, "requests", "--awaiting", "--as", CHECKERS[0]))
    assert waiting.count(request) == 2 and "measure.csv" in waiting and "table.csv" in waiting
    assert "Nothing is waiting" in ok(tre(home, "requests", "--awaiting", "--as", BOTH))
    refused_cli(tre(home, "requests", "--awaiting"), "--as HANDLE")
    shown = ok(tre(home, "show", request))
    assert "state: awaiting review" in shown and f"run: {run} by {LEAD}" in shown
    assert DEFINITION_SHA in shown and "<b>Checks</b> & deciles" in shown

    before = snapshot(engine)
    refused_cli(tre(home, "approve", request, "table.csv", "--as", LEAD), "output checker role")
    refused_cli(tre(home, "approve", request, "table.csv", "--as", BOTH), "author's organisation")
    refused_cli(tre(home, "show", "REQ-999999"), "no release request")
    assert tre(home, "reject", request, "table.csv", "--as", CHECKERS[0]).exit_code == 2
    assert snapshot(engine) == before

    out = ok(tre(home, "approve", request, "table.csv", "--as", CHECKERS[0]))
    assert "Still waiting for approvals: measure.csv, table.csv" in out
    ok(tre(home, "approve", request, "measure.csv", "--as", CHECKERS[0]))
    ok(tre(home, "approve", request, "table.csv", "--as", CHECKERS[1], "--comment", "fine"))
    refused_cli(tre(home, "approve", request, "table.csv", "--as", CHECKERS[1]), "already reviewed")
    out = ok(tre(home, "approve", request, "measure.csv", "--as", CHECKERS[1]))
    [release] = rows(engine, Release)
    folder = home / "register" / "releases" / str(release.id)
    assert f"{request} released as release {release.id}" in out
    assert everything_in(folder) == {
        "table.csv": TABLE,
        "measure.csv": MEASURE,
        "definition.json": DEFINITION.encode(),
    }
    html = (home / "register" / "index.html").read_text()
    assert f'href="releases/{release.id}/table.csv"' in html
    assert f'href="releases/{release.id}/definition.json"' in html
    assert run in html and DEFINITION_SHA in html and "Lake version" in html
    assert "&lt;b&gt;Checks&lt;/b&gt; &amp; deciles" in html and "<b>Checks" not in html
    data = orjson.loads((home / "register" / "register.json").read_bytes())
    [entry] = [a for a in data["agreements"] if a["agreement"] == dsa]
    assert entry["releases"][0]["run"] == run

    out = ok(tre(home, "return", returned, "table.csv", "--as", CHECKERS[0], "--comment", "why?"))
    assert f"{returned} returned to its author" in out
    assert "returned to its author" in ok(tre(home, "show", returned))
    refused_cli(
        tre(home, "approve", returned, "table.csv", "--as", CHECKERS[1]), "nothing more to review"
    )
    shown = ok(tre(home, "show", request))
    assert "state: released" in shown and "fine" in shown


def test_a_file_changed_before_the_last_approval_is_not_released(
    home: Path, engine: sa.Engine
) -> None:
    run = new_run(engine, in_force(engine), home=home)
    request = new_request(engine, run)
    ok(tre(home, "approve", request, "table.csv", "--as", CHECKERS[0]))
    (home / "tre" / "runs" / run / "outputs" / "table.csv").write_bytes(b"sex,patients\nF,3\n")
    before = snapshot(engine)
    refused_cli(
        tre(home, "approve", request, "table.csv", "--as", CHECKERS[1]),
        "table.csv changed after it was checked",
        "nothing was published",
    )
    assert snapshot(engine) == before  # the approval is not recorded: nothing was released
    assert not (home / "register" / "releases").exists() or not list(
        (home / "register" / "releases").iterdir()
    )
    out = ok(tre(home, "reject", request, "table.csv", "--as", CHECKERS[1], "--comment", "changed"))
    assert f"{request} rejected" in out


def write_cells(home: Path, run: str, entries: list[dict[str, Any]]) -> None:
    (home / "tre" / "runs" / run / "cells.json").write_bytes(orjson.dumps(entries))


def test_review_show_counts_each_files_cells_by_status_and_never_a_raw_count(
    home: Path, engine: sa.Engine
) -> None:
    files = {"table.csv": TABLE, "measure.csv": MEASURE}
    run = new_run(engine, in_force(engine), files, home=home)
    request = new_request(engine, run, files)
    assert "not kept" in ok(tre(home, "show", request))  # the run kept no cells.json
    write_cells(
        home,
        run,
        [
            {"file": "table.csv", "row": row, "column": "patients", "raw": CANARY_RAW + row,
             "key": CANARY_KEY, "released": status != "redacted", "status": status,
             "reason": reason}
            for row, status, reason in (
                (1, "rounded", "rounded to the nearest 5"),
                (2, "rounded", "rounded to the nearest 5"),
                (3, "redacted", "7 or fewer people"),
            )
        ]
        + [  # the shape before statuses: published if released, else redacted
            {"file": "measure.csv", "row": 1, "column": column, "dims": "CANARY-DIMS",
             "raw": CANARY_RAW, "released": column == "denominator"}
            for column in ("numerator", "denominator")
        ],
    )  # fmt: skip
    shown = ok(tre(home, "show", request))
    counts = shown[shown.index("published cells") :]
    assert re.search(r"measure\.csv\D+1\D+0\D+1\D+0\D", counts), counts
    assert re.search(r"table\.csv\D+0\D+2\D+1\D+0\D", counts), counts
    assert "rounded: rounded to the nearest 5" in shown and "redacted: 7 or fewer people" in shown
    for canary in (str(CANARY_RAW)[:6], CANARY_KEY[:12], "CANARY-DIMS"):
        assert canary not in shown


def test_a_funders_checker_and_a_turned_down_file_are_refused_by_the_commands(
    home: Path, engine: sa.Engine
) -> None:
    from gpdpr.tre.cli import tre_app

    act(
        engine,
        lambda s: people.add_person(
            s, ADMIN, "k.funder", "K Funder", "kf@example.org", CHARITY, ["output_checker"]
        ),
    )
    dsa = in_force(engine)
    run = new_run(engine, dsa, home=home)
    request = new_request(engine, run)
    ok(tre(home, "requests"))  # the first command catches the record up (expiries, the log)
    before = snapshot(engine)
    refused_cli(
        tre(home, "approve", request, "table.csv", "--as", "k.funder"),
        f"k.funder cannot check {request}",
        "a funder of APP-",
    )
    assert snapshot(engine) == before
    assert "Nothing is waiting" in ok(tre(home, "requests", "--awaiting", "--as", "k.funder"))

    ok(tre(home, "reject", request, "table.csv", "--as", CHECKERS[0], "--comment", "too small"))
    again = new_run(engine, dsa, home=home)  # the same definition run again: the same bytes
    write_cells(home, again, [])
    ok(tre(home, "requests"))
    before = snapshot(engine)
    asked_again = CliRunner().invoke(
        tre_app,
        ["request", again, "--file", "table.csv", "--title", "Again", "--as", LEAD,
         "--home", str(home)],
    )  # fmt: skip
    refused_cli(asked_again, f"table.csv is, byte for byte, a file that was rejected in {request}")
    assert snapshot(engine) == before
