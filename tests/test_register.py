"""The Data Uses Register: generated from the database as JSON, CSV and HTML that agree with
each other, showing per agreement everything the public is owed, refusals with their reasons,
releases, and the status as of the day it is made; never a contact detail, never raw markup."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from governing import (
    ADMIN,
    CHARITY,
    CHECKERS,
    LEAD,
    PANEL,
    act,
    agreement_of,
    bring_to,
    later,
    new_draft,
    votes,
)
from gpdpr.db.models import now
from gpdpr.governance import agreements, applications, panel, register, releases
from gpdpr.governance.register import CSV_COLUMNS

SHA = "cd" * 32
DEFINITION = '{"population":"adults with type 2 diabetes"}'
DEFINITION_SHA = hashlib.sha256(DEFINITION.encode()).hexdigest()


def built(engine: sa.Engine, at: datetime | None = None) -> dict[str, Any]:
    with Session(engine) as session:
        return register.build(session, at)


def by_reference(reg: dict[str, Any], key: str = "agreements") -> dict[str, dict[str, Any]]:
    rows = reg[key]
    assert isinstance(rows, list)
    return {r.get("agreement") or r["application"]: r for r in rows}


class Text(HTMLParser):
    """The visible text of a page, and its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def page_text(html: str) -> tuple[str, list[str]]:
    parser = Text()
    parser.feed(html)
    return " ".join(" ".join(parser.text).split()), parser.tags


def test_each_agreement_shows_what_the_public_is_owed(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    votes(gov, reference)
    act(gov, lambda s: panel.decide(s, ADMIN, reference, "Approved; see minute 4.", ["no linkage"]))
    dsa = act(gov, lambda s: agreements.issue(s, ADMIN, reference).reference)
    act(
        gov,
        lambda s: releases.record_release(
            s,
            dsa,
            LEAD,
            CHECKERS,
            "HbA1c by decile",
            "Table 1",
            DEFINITION_SHA,
            {"t1.csv": SHA},
            run_reference="RUN-000001",
            lake_version=4,
            definition=DEFINITION,
        ),
    )
    entry = by_reference(built(gov))[dsa]
    assert entry["status"] == "active"
    assert entry["application"] == reference
    assert [o["name"] for o in entry["organisations"]] == ["University of Leeds", CHARITY]
    assert entry["purpose"] == "Research"
    assert entry["lay_summary"] == "Do people in poorer areas get the same diabetes checks?"
    assert "Art. 9(2)(j)" in str(entry["legal_basis"])
    assert entry["commercial"] is False
    assert entry["national_data_opt_out"] == "applied"
    assert {(i["table"], i["field"]) for i in entry["data_items"]} == {
        ("patients", "patient"),
        ("patients", "imd_decile"),
        ("clinical_events", "code"),
        ("clinical_events", "effective_date"),
    }
    assert entry["starts_on"] == now().date().isoformat()
    assert entry["conditions"] == ["no linkage"]
    decision = entry["decision"]
    assert isinstance(decision, dict)
    assert (decision["outcome"], decision["votes_for"], decision["minutes"]) == (
        "approved",
        3,
        "Approved; see minute 4.",
    )
    assert decision["members_voting"] == sorted(h.replace(".", " ").title() for h in PANEL)
    [shown] = entry["releases"]
    assert shown["title"] == "HbA1c by decile"
    assert shown["code_sha256"] == DEFINITION_SHA
    assert shown["checked_by"] == ["K One", "K Two"]
    assert (shown["run"], shown["lake_version"]) == ("RUN-000001", 4)


def test_refusals_are_published_with_their_reasons(gov: sa.Engine) -> None:
    automatic = bring_to(gov, "refused")
    by_panel = bring_to(gov, "under_review")
    votes(gov, by_panel, ("refuse", "refuse", "approve"))
    act(gov, lambda s: panel.decide(s, ADMIN, by_panel, "No benefit shown."))
    refused = by_reference(built(gov), "refused")
    assert refused[automatic]["refused_by"] == "the automatic checks"
    assert "Marketing is excluded" in str(refused[automatic]["reason"])
    assert refused[by_panel]["refused_by"] == "the review panel"
    assert refused[by_panel]["decision"]["minutes"] == "No benefit shown."


def test_drafts_and_applications_in_review_are_not_on_the_register(gov: sa.Engine) -> None:
    for state in ("draft", "submitted", "under_review", "approved", "withdrawn"):
        bring_to(gov, state)
    reg = built(gov)
    assert reg["agreements"] == [] and reg["refused"] == []


def test_the_status_is_as_of_the_day_the_register_is_made(gov: sa.Engine) -> None:
    active = agreement_of(gov, bring_to(gov, "agreement_active"))
    revoked = agreement_of(gov, bring_to(gov, "revoked"))
    approved = bring_to(gov, "approved")
    future = act(
        gov,
        lambda s: agreements.issue(s, ADMIN, approved, now().date() + timedelta(days=30)).reference,
    )
    today = {k: v["status"] for k, v in by_reference(built(gov)).items()}
    assert today == {active: "active", revoked: "revoked", future: "not yet started"}
    in_two_years = {k: v["status"] for k, v in by_reference(built(gov, later(730))).items()}
    assert in_two_years == {active: "expired", revoked: "revoked", future: "expired"}


def test_the_three_formats_agree_and_are_written_whole(gov: sa.Engine, tmp_path: Path) -> None:
    for state in ("agreement_active", "revoked", "refused"):
        bring_to(gov, state)
    with Session(gov) as session:
        written = register.write(session, tmp_path / "register")
    assert sorted(p.name for p in written.values()) == [
        "index.html",
        "register.csv",
        "register.json",
    ]
    assert not list((tmp_path / "register").glob(".*"))  # no partial files left behind
    data = orjson.loads(written["json"].read_bytes())
    rows = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["agreement"] for r in rows] == [a["agreement"] for a in data["agreements"]]
    assert [r["status"] for r in rows] == ["active", "revoked"]
    text, tags = page_text(written["html"].read_text())
    for entry in data["agreements"]:
        assert f"{entry['agreement']}: {entry['title']}" in text
        assert entry["lay_summary"] in text
    for entry in data["refused"]:
        assert entry["reason"] in text
    assert "svg" in tags  # the timeline is drawn
    assert "today" in text


def test_what_applicants_write_is_shown_as_text_never_as_markup(gov: sa.Engine) -> None:
    reference = new_draft(gov, lay_summary='<script>alert("x")</script> & <b>bold</b>')
    act(gov, lambda s: applications.submit(s, LEAD, reference))
    act(gov, lambda s: panel.start_review(s, ADMIN, reference))
    votes(gov, reference)
    act(gov, lambda s: panel.decide(s, ADMIN, reference, "<i>ok</i>"))
    act(gov, lambda s: agreements.issue(s, ADMIN, reference))
    with Session(gov) as session:
        html = register.to_html(register.build(session))
    text, tags = page_text(html)
    assert "script" not in tags and "b" not in tags and "i" not in tags
    assert '<script>alert("x")</script> & <b>bold</b>' in text
    assert "<i>ok</i>" in text


def test_the_register_holds_no_contact_details(gov: sa.Engine, tmp_path: Path) -> None:
    for state in ("agreement_active", "refused"):
        bring_to(gov, state)
    with Session(gov) as session:
        written = register.write(session, tmp_path)
    for path in written.values():
        assert b"@example.org" not in path.read_bytes(), path.name
