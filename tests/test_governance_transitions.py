"""Every action an application can be asked to make, from every state it can be in: the ones in
the transition table move it where the table says, every other is refused with an error naming
the application and leaves the whole database exactly as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from governing import (
    ADMIN,
    FAR_FUTURE,
    LEAD,
    PANEL,
    act,
    agreement_of,
    bring_to,
    form,
    snapshot,
    state_of,
    votes,
)
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import agreements, applications, panel
from gpdpr.governance.vocabulary import ACTIONS, STATES, TRANSITIONS

Action = Callable[[Session], object]


def action(engine: sa.Engine, name: str, reference: str) -> Action:
    """The action `name` on `reference`, asked for by someone entitled to ask, with good
    arguments: so that a refusal can only be the state's doing."""
    dsa = agreement_of(engine, reference) or f"DSA-for-{reference}"
    return {
        "edit": lambda s: applications.edit_draft(s, LEAD, reference, form(title="Renamed")),
        "submit": lambda s: applications.submit(s, LEAD, reference),
        "withdraw": lambda s: applications.withdraw(s, LEAD, reference, "no longer needed"),
        "start_review": lambda s: panel.start_review(s, ADMIN, reference),
        "declare_conflict": lambda s: panel.declare_conflict(s, PANEL[0], reference, "co-author"),
        "vote": lambda s: panel.vote(s, PANEL[0], reference, "approve"),
        "decide": lambda s: panel.decide(s, ADMIN, reference, "Minutes of the meeting."),
        "issue_agreement": lambda s: agreements.issue(s, ADMIN, reference),
        "revoke": lambda s: agreements.revoke(s, ADMIN, dsa, "breach of conditions"),
        "expire": lambda s: agreements.expire_due(s, FAR_FUTURE),
    }[name]


def test_the_table_covers_every_state_and_action() -> None:
    assert {state for _, state in TRANSITIONS} <= set(STATES)
    assert set(TRANSITIONS.values()) <= set(STATES)
    assert len(ACTIONS) == 10


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("name", ACTIONS)
def test_every_action_from_every_state(gov: sa.Engine, state: str, name: str) -> None:
    reference = bring_to(gov, state)
    if name == "decide" and state == "under_review":
        votes(gov, reference)  # a decision needs a quorum of votes first
    before = snapshot(gov)
    allowed = TRANSITIONS.get((name, state))

    if allowed is None and name == "expire":
        # Expiry is a sweep over end dates, not a request: it refuses nothing, and must leave
        # an application that has no running agreement exactly as it was.
        act(gov, action(gov, name, reference))
        assert snapshot(gov) == before
        return
    if allowed is None:
        with pytest.raises(UserError) as refused:
            act(gov, action(gov, name, reference))
        assert reference in str(refused.value) or "no agreement" in str(refused.value)
        if agreement_of(gov, reference) or name != "revoke":
            assert isinstance(refused.value, NotAllowed)
            assert f"it is {state.replace('_', ' ')}" in str(refused.value)
        assert snapshot(gov) == before, "a refused action changed the record"
        return

    act(gov, action(gov, name, reference))
    assert state_of(gov, reference) == allowed
    assert snapshot(gov) != before
