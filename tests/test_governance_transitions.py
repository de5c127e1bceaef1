"""Every action an application can be asked to make, from every state it can be in: the ones in
the transition table move it where the table says, every other is refused with an error naming
the application and leaves the whole database exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from databases import BACKENDS, engines
from governing import (
    ADMIN,
    FAR_FUTURE,
    LEAD,
    PANEL,
    act,
    agreement_of,
    bring_to,
    cast,
    form,
    snapshot,
    state_of,
    votes,
)
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import agreements, applications, panel
from gpdpr.governance.vocabulary import ACTIONS, STATES, TRANSITIONS

Action = Callable[[Session], object]


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    for made in engines(request.param, tmp_path):
        cast(made)
        yield made


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
def test_every_action_from_every_state(engine: sa.Engine, state: str, name: str) -> None:
    reference = bring_to(engine, state)
    if name == "decide" and state == "under_review":
        votes(engine, reference)  # a decision needs a quorum of votes first
    before = snapshot(engine)
    allowed = TRANSITIONS.get((name, state))

    if allowed is None and name == "expire":
        # Expiry is a sweep over end dates, not a request: it refuses nothing, and must leave
        # an application that has no running agreement exactly as it was.
        act(engine, action(engine, name, reference))
        assert snapshot(engine) == before
        return
    if allowed is None:
        with pytest.raises(UserError) as refused:
            act(engine, action(engine, name, reference))
        assert reference in str(refused.value) or "no agreement" in str(refused.value)
        if agreement_of(engine, reference) or name != "revoke":
            assert isinstance(refused.value, NotAllowed)
            assert f"it is {state.replace('_', ' ')}" in str(refused.value)
        assert snapshot(engine) == before, "a refused action changed the record"
        return

    act(engine, action(engine, name, reference))
    assert state_of(engine, reference) == allowed
    assert snapshot(engine) != before
