"""Governance through the service functions the CLI and the portal call: the automatic checks on
submission, who may act, the panel's conflicts, votes, quorum and decisions, agreements and the
access they give (and stop giving), and releases. On SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from databases import engines
from governing import (
    ADMIN,
    BOTH,
    CHECKERS,
    COLLEAGUE,
    COUNCIL,
    LEAD,
    PANEL,
    PANEL_FROM_LEEDS,
    PHARMA,
    VENDOR,
    act,
    agreement_of,
    bring_to,
    form,
    later,
    new_draft,
    snapshot,
    state_of,
    votes,
)
from gpdpr.db.models import Event, now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import agreements, applications, panel, releases
from gpdpr.governance.form import Item, Population
from gpdpr.governance.models import Application

SHA = "ab" * 32
DEFINITION = '{"population":"adults"}'
DEFINITION_SHA = hashlib.sha256(DEFINITION.encode()).hexdigest()


def refused(engine: sa.Engine, do: Callable[[Session], object], *words: str) -> str:
    """Run `do`, which must be refused with a message holding `words`, changing nothing."""
    before = snapshot(engine)
    with pytest.raises(UserError) as error:
        act(engine, do)
    message = str(error.value)
    for word in words:
        assert word in message, message
    assert snapshot(engine) == before
    return message


def events(engine: sa.Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(Event).order_by(Event.id)))


def submit(engine: sa.Engine, reference: str, lead: str = LEAD) -> Application:
    return act(engine, lambda s: applications.submit(s, lead, reference))


# ---- the automatic checks on submission --------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"purpose_category": "marketing"}, "Marketing is excluded"),
        ({"uses_for_marketing": True}, "Marketing is excluded"),
        ({"purpose_category": "insurance"}, "Insurance is excluded"),
        ({"uses_for_insurance": True}, "Insurance is excluded"),
        (
            {"commercial": True, "commercial_benefit": "sales", "expected_benefit": " "},
            "purely commercial purpose is excluded",
        ),
    ],
)
def test_excluded_purposes_are_refused_at_once_with_the_reason(
    gov: sa.Engine, changes: dict[str, Any], reason: str
) -> None:
    reference = new_draft(gov, **changes)
    app = submit(gov, reference)
    assert app.state == "refused"
    assert reason in app.outcome_reason
    refusal = [e for e in events(gov) if e.kind == "application.refused"]
    assert refusal and reason in refusal[0].details["reason"]
    assert refusal[0].actor == "automatic checks"


def test_a_commercial_purpose_with_a_health_benefit_goes_to_the_panel_flagged(
    gov: sa.Engine,
) -> None:
    reference = new_draft(
        gov, lead=VENDOR, commercial=True, commercial_benefit="a product to sell", team=()
    )
    app = submit(gov, reference, VENDOR)
    assert app.state == "submitted"
    assert any("commercial applicant" in flag for flag in app.flags)


def test_items_outside_the_specification_are_rejected_and_nothing_is_saved(
    gov: sa.Engine,
) -> None:
    for items, words in (
        ((Item("patients", "name", "to greet them"),), ("patients.name", "does not collect")),
        ((Item("letters", "text", "x"),), ("no table 'letters'",)),
        ((Item("patients", "sex", "a"), Item("patients", "sex", "b")), ("asked for twice",)),
    ):

        def draft(s: Session, i: tuple[Item, ...] = items) -> object:
            return applications.create_draft(s, LEAD, form(items=i))

        refused(gov, draft, *words)
    with Session(gov) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Application)) == 0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"purpose_category": "fun"}, ("purpose_category", "research")),
        ({"legal_basis": "because"}, ("legal_basis",)),
        ({"ndoo_exemption": "we_asked_nicely"}, ("ndoo_exemption",)),
        ({"data_from": date(2026, 1, 1), "data_to": date(2020, 1, 1)}, ("swap them",)),
        ({"duration_months": 0}, ("duration_months",)),
        ({"population": Population(min_age=70, max_age=20)}, ("no one fits",)),
        ({"population": Population(sexes=("X",))}, ("population.sexes",)),
        ({"population": Population(regions=("London",))}, ("region codes",)),
        ({"team": ("p.one",)}, ("applicant role",)),
        ({"funders": ("Nobody Ltd",)}, ("no organisation",)),
    ],
)
def test_a_draft_that_cannot_be_right_is_refused_naming_the_field(
    gov: sa.Engine, changes: dict[str, Any], words: tuple[str, ...]
) -> None:
    refused(gov, lambda s: applications.create_draft(s, LEAD, form(**changes)), *words)


def test_an_incomplete_application_stays_a_draft_listing_what_is_missing(gov: sa.Engine) -> None:
    reference = new_draft(gov, lay_summary="", items=(), data_to=None)
    message = refused(gov, lambda s: applications.submit(s, LEAD, reference), "stays a draft")
    for missing in ("lay_summary", "items", "data_from and data_to"):
        assert missing in message
    assert state_of(gov, reference) == "draft"


def test_the_panel_is_shown_what_needs_a_closer_look(gov: sa.Engine) -> None:
    reference = new_draft(
        gov,
        lay_summary="Helps set insurance premiums fairly",
        items=(Item("patients", "sex", ""), Item("patients", "birth_year", "age bands")),
        ndoo_exemption="overriding_public_interest",
        ndoo_exemption_reason="pandemic",
    )
    flags = submit(gov, reference).flags
    assert "patients.sex has no justification" in flags
    assert not any("birth_year" in f for f in flags)
    assert any("'insurance'" in f and "'premium'" in f for f in flags)
    assert any("National Data Opt-out" in f for f in flags)


# ---- who may do what ---------------------------------------------------------------------------


def test_only_the_lead_applicant_edits_submits_and_withdraws(gov: sa.Engine) -> None:
    reference = new_draft(gov)
    for do in (
        lambda s: applications.edit_draft(s, COLLEAGUE, reference, form(title="Mine now")),
        lambda s: applications.submit(s, COLLEAGUE, reference),
        lambda s: applications.withdraw(s, VENDOR, reference, ""),
    ):
        refused(gov, do, "only its lead applicant", LEAD)


def test_roles_are_required(gov: sa.Engine) -> None:
    reference = bring_to(gov, "submitted")
    refused(gov, lambda s: panel.start_review(s, LEAD, reference), "administrator role")
    act(gov, lambda s: panel.start_review(s, ADMIN, reference))
    refused(gov, lambda s: panel.vote(s, ADMIN, reference, "approve"), "panel member role")
    refused(gov, lambda s: panel.decide(s, PANEL[0], reference, "x"), "administrator role")
    refused(
        gov,
        lambda s: applications.create_draft(s, PANEL[0], form()),
        "needs the applicant role",
    )
    refused(gov, lambda s: panel.vote(s, "nobody", reference, "approve"), "no one has")


def test_a_member_of_an_organisation_on_the_application_cannot_vote(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    refused(
        gov,
        lambda s: panel.vote(s, PANEL_FROM_LEEDS, reference, "approve"),
        "belong to University of Leeds",
    )
    # a collaborator's member, likewise
    other = new_draft(gov, collaborators=(COUNCIL,))
    submit(gov, other)
    act(gov, lambda s: panel.start_review(s, ADMIN, other))
    refused(gov, lambda s: panel.vote(s, PANEL[1], other, "refuse"), COUNCIL)


def test_a_declared_conflict_bars_the_vote_and_strikes_one_already_cast(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    act(gov, lambda s: panel.vote(s, PANEL[0], reference, "approve"))
    act(gov, lambda s: panel.declare_conflict(s, PANEL[0], reference, "supervised the lead"))
    refused(gov, lambda s: panel.vote(s, PANEL[0], reference, "approve"), "supervised the lead")
    refused(gov, lambda s: panel.declare_conflict(s, PANEL[0], reference, "again"), "already")
    refused(gov, lambda s: panel.declare_conflict(s, PANEL[1], reference, " "), "say what")
    with Session(gov) as session:
        app = applications.application(session, reference)
        assert panel.counted_votes(session, app) == []
    conflict = next(e for e in events(gov) if e.kind == "panel.conflict")
    assert conflict.details["vote_struck"] is True


def test_each_member_votes_once(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    act(gov, lambda s: panel.vote(s, PANEL[0], reference, "approve"))
    refused(gov, lambda s: panel.vote(s, PANEL[0], reference, "refuse"), "already voted")
    refused(gov, lambda s: panel.vote(s, PANEL[1], reference, "maybe"), "approve or refuse")


# ---- the decision ------------------------------------------------------------------------------


def test_no_decision_without_a_quorum_of_counted_votes(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    votes(gov, reference, ("approve", "approve"))
    refused(gov, lambda s: panel.decide(s, ADMIN, reference, "Minutes"), "2 of the 3 votes")
    act(gov, lambda s: panel.vote(s, PANEL[2], reference, "approve"))
    act(gov, lambda s: panel.declare_conflict(s, PANEL[2], reference, "consultancy"))
    refused(gov, lambda s: panel.decide(s, ADMIN, reference, "Minutes"), "2 of the 3 votes")
    decision = act(gov, lambda s: panel.decide(s, ADMIN, reference, "Minutes", quorum=2))
    assert (decision.outcome, decision.quorum, decision.votes_for) == ("approved", 2, 2)


def test_the_votes_decide_and_minutes_are_required(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    votes(gov, reference, ("approve", "refuse", "refuse"))
    refused(gov, lambda s: panel.decide(s, ADMIN, reference, "  "), "minutes")
    refused(
        gov,
        lambda s: panel.decide(s, ADMIN, reference, "M", ["only aggregate outputs"]),
        "conditions go with an approval only",
    )
    decision = act(gov, lambda s: panel.decide(s, ADMIN, reference, "Not in the public good."))
    assert (decision.outcome, decision.votes_for, decision.votes_against) == ("refused", 1, 2)
    assert state_of(gov, reference) == "refused"


def test_a_tie_is_not_an_approval(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    votes(gov, reference, ("approve", "refuse"))
    decision = act(gov, lambda s: panel.decide(s, ADMIN, reference, "Split.", quorum=2))
    assert decision.outcome == "refused"


# ---- agreements and access ---------------------------------------------------------------------


def issue(gov: sa.Engine, reference: str, **kwargs: Any) -> str:
    return act(gov, lambda s: agreements.issue(s, ADMIN, reference, **kwargs).reference)


def test_an_agreement_grants_what_was_approved_for_as_long_as_approved(gov: sa.Engine) -> None:
    reference = bring_to(gov, "under_review")
    votes(gov, reference)
    act(gov, lambda s: panel.decide(s, ADMIN, reference, "Approved.", ["no linkage"]))
    today = now().date()
    refused(gov, lambda s: agreements.issue(s, ADMIN, reference, today - timedelta(1)), "past")
    refused(
        gov,
        lambda s: agreements.issue(s, ADMIN, reference, today, today + timedelta(days=400)),
        "12 months the panel approved",
    )
    dsa = issue(gov, reference)
    with Session(gov) as session:
        made = agreements.agreement(session, dsa)
        assert made.ends_on == agreements.add_months(today, 12)
        assert made.conditions == ["no linkage"]
        assert made.scope["tables"] == {
            "clinical_events": ["code", "effective_date"],
            "patients": ["imd_decile", "patient"],
        }
        assert made.scope["national_data_opt_out"] == "applied"
        assert made.scope["population"] == {"min_age": 18}
    scope = act(gov, lambda s: agreements.authorise(s, COLLEAGUE, dsa, {"patients": ["patient"]}))
    assert scope.national_data_opt_out_applied
    assert (scope.data_from, scope.data_to) == (date(2016, 1, 1), date(2026, 1, 1))


def test_access_is_only_for_the_team_and_only_within_scope(gov: sa.Engine) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    for handle, wanted, words in (
        (VENDOR, {"patients": ["patient"]}, ("not named on its team",)),
        (PANEL[0], {}, ("not named on its team",)),
        (LEAD, {"patients": ["sex", "patient"], "medications": ["code"]}, ("medications.code",)),
    ):

        def authorise(s: Session, h: str = handle, w: dict[str, list[str]] = wanted) -> object:
            return agreements.authorise(s, h, dsa, w)

        refused(gov, authorise, *words)


def test_access_stops_at_the_end_date_with_nobody_acting(gov: sa.Engine) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    with Session(gov) as session:
        ends = agreements.agreement(session, dsa).ends_on
    day_before = later((ends - now().date()).days - 1)
    act(gov, lambda s: agreements.authorise(s, LEAD, dsa, {}, at=day_before))
    message = refused(
        gov,
        lambda s: agreements.authorise(s, LEAD, dsa, {}, at=later((ends - now().date()).days)),
        f"it ended on {ends}",
    )
    assert "access stops" in message
    with Session(gov) as session:  # nobody has run anything: the record still says active
        assert agreements.agreement(session, dsa).status == "active"
    expired = act(gov, lambda s: [a.reference for a in agreements.expire_due(s, later(9999))])
    assert expired == [dsa]
    assert [e.actor for e in events(gov) if e.kind == "agreement.expired"] == [
        agreements.EXPIRY_ACTOR
    ]


def test_access_stops_at_once_on_revocation_and_not_before_the_start(gov: sa.Engine) -> None:
    reference = bring_to(gov, "approved")
    dsa = issue(gov, reference, starts_on=now().date() + timedelta(days=10))
    refused(gov, lambda s: agreements.authorise(s, LEAD, dsa, {}), "it starts on")
    act(gov, lambda s: agreements.authorise(s, LEAD, dsa, {}, at=later(11)))
    refused(gov, lambda s: agreements.revoke(s, ADMIN, dsa, ""), "say why")
    act(gov, lambda s: agreements.revoke(s, ADMIN, dsa, "data shared outside the agreement"))
    refused(
        gov,
        lambda s: agreements.authorise(s, LEAD, dsa, {}, at=later(11)),
        "revoked",
        "data shared outside the agreement",
    )


def test_an_opt_out_exemption_the_panel_approved_is_in_the_scope(gov: sa.Engine) -> None:
    reference = new_draft(
        gov, ndoo_exemption="communicable_disease", ndoo_exemption_reason="outbreak"
    )
    submit(gov, reference)
    act(gov, lambda s: panel.start_review(s, ADMIN, reference))
    votes(gov, reference)
    act(gov, lambda s: panel.decide(s, ADMIN, reference, "Approved under COPI."))
    dsa = issue(gov, reference)
    scope = act(gov, lambda s: agreements.authorise(s, LEAD, dsa, {}))
    assert not scope.national_data_opt_out_applied


def test_a_stale_read_cannot_move_an_application(gov: sa.Engine) -> None:
    """Two people acting at once: the second one's view is out of date, and is refused."""
    reference = bring_to(gov, "submitted")
    with Session(gov, expire_on_commit=False) as first:
        app = applications.application(first, reference)
        first.commit()  # keep the object, as a long-lived form page would
        act(gov, lambda s: applications.withdraw(s, LEAD, reference, "changed plans"))
        with pytest.raises(NotAllowed, match="changed while"):
            applications.advance(first, app, "start_review")
        first.rollback()
    assert state_of(gov, reference) == "withdrawn"


# ---- releases ----------------------------------------------------------------------------------


def release(
    dsa: str, requester: str = LEAD, checkers: tuple[str, str] = CHECKERS
) -> Callable[[Session], object]:
    return lambda s: releases.record_release(
        s, dsa, requester, checkers, "HbA1c checks by decile", "", DEFINITION_SHA,
        {"table.csv": SHA}, run_reference="RUN-000001", lake_version=1, definition=DEFINITION,
    )  # fmt: skip


def test_a_release_needs_two_checkers_from_outside_the_project(gov: sa.Engine) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    refused(gov, release(dsa, checkers=(CHECKERS[0], CHECKERS[0])), "two different")
    refused(gov, release(dsa, checkers=(CHECKERS[0], PANEL[0])), "output checker role")
    # BOTH is an output checker, and on no team yet: put them on this project's team
    reference = new_draft(gov, team=(COLLEAGUE, BOTH))
    submit(gov, reference)
    act(gov, lambda s: panel.start_review(s, ADMIN, reference))
    votes(gov, reference)
    act(gov, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    own = issue(gov, reference)
    refused(gov, release(own, checkers=(BOTH, CHECKERS[0])), "their own project")
    refused(gov, release(dsa, requester=VENDOR), "not named on its team")
    act(gov, release(dsa))
    published = [e for e in events(gov) if e.kind == "release.published"]
    assert published[0].details["agreement"] == dsa


def test_no_release_once_the_agreement_has_ended(gov: sa.Engine) -> None:
    dsa = agreement_of(gov, bring_to(gov, "revoked"))
    assert dsa
    refused(gov, release(dsa), "revoked")


# ---- the public record -------------------------------------------------------------------------


def test_every_step_is_an_event_and_no_event_holds_contact_details(gov: sa.Engine) -> None:
    reference = bring_to(gov, "agreement_active")
    act(gov, release(agreement_of(gov, reference) or ""))
    kinds = [e.kind for e in events(gov)]
    for kind in (
        "governance.organisation",
        "governance.person",
        "application.submitted",
        "review.started",
        "panel.vote",
        "panel.decision",
        "agreement.issued",
        "release.published",
    ):
        assert kind in kinds
    assert "@" not in repr([(e.actor, e.details) for e in events(gov)])


def test_a_draft_is_private_until_submitted(gov: sa.Engine) -> None:
    reference = new_draft(gov)
    act(gov, lambda s: applications.withdraw(s, LEAD, reference, "not now"))
    assert not [e for e in events(gov) if e.kind.startswith("application.")]


def test_an_nhs_number_in_a_title_never_reaches_the_public_record(gov: sa.Engine) -> None:
    reference = new_draft(gov, title="Follow-up of 943 476 5919")
    refused(gov, lambda s: applications.submit(s, LEAD, reference), "NHS number")
    assert state_of(gov, reference) == "draft"


def test_people_and_organisations_are_checked(gov: sa.Engine) -> None:
    from gpdpr.governance import people

    def person(
        handle: str, email: str, roles: list[str], by: str | None = ADMIN
    ) -> Callable[[Session], object]:
        return lambda s: people.add_person(s, by, handle, "E", email, None, roles)

    refused(gov, lambda s: people.add_organisation(s, ADMIN, PHARMA, "commercial"), "already")
    refused(gov, lambda s: people.add_organisation(s, ADMIN, "Acme", "cartel"), "not one of")
    refused(gov, person("Bad Handle", "x@y.org", ["applicant"]), "lower-case")
    refused(gov, person("e.new", "nope", ["applicant"]), "email")
    refused(gov, person("e.new", "e@y.org", ["king"]), "roles")
    refused(gov, person("e.new", "e@y.org", ["applicant"]), "applies for an organisation")
    refused(gov, person(LEAD, "e@y.org", ["panel_member"]), "already")


def test_only_an_administrator_adds_people_and_organisations(gov: sa.Engine) -> None:
    from gpdpr.governance import people

    refused(
        gov,
        lambda s: people.add_person(s, LEAD, "e.new", "E", "e@y.org", None, ["administrator"]),
        "administrator role",
    )
    refused(
        gov,
        lambda s: people.add_person(s, None, "e.new", "E", "e@y.org", None, ["administrator"]),
        "only an administrator adds people",
    )
    refused(gov, lambda s: people.add_organisation(s, PANEL[0], "Acme", "charity"), "administrator")


def test_a_new_service_starts_with_its_first_administrator(tmp_path: Path) -> None:
    from gpdpr.governance import people

    for empty in engines("sqlite", tmp_path):
        refused(
            empty,
            lambda s: people.add_person(s, None, "a.first", "A", "a@y.org", None, ["applicant"]),
            "the first person added must be one",
        )
        act(
            empty,
            lambda s: people.add_person(s, None, "root", "R", "r@y.org", None, ["administrator"]),
        )
        act(empty, lambda s: people.add_organisation(s, "root", "Acme", "charity"))
