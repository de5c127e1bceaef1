"""The independent review panel: reviews started by the administrator, conflicts of interest
declared, votes cast by members free of conflict, and the decision recorded with its minutes
once a quorum has voted.

A member cannot vote on an application from an organisation they belong to, one whose team they
are on, or one they have declared a conflict on. The decision follows the counted votes: approved
only with more votes for than against.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance.applications import (
    advance,
    application,
    organisation_ids,
    public,
    refusal,
)
from gpdpr.governance.models import Application, Conflict, Decision, Person, Vote
from gpdpr.governance.people import acting
from gpdpr.governance.vocabulary import DEFAULT_QUORUM, TRANSITIONS


def start_review(session: Session, handle: str, reference: str) -> Application:
    acting(session, handle, "administrator", "start a review")
    app = application(session, reference)
    advance(session, app, "start_review")
    record(session, "review.started", handle, {**public(app), "flags": app.flags})
    return app


def conflicts_of(session: Session, member: Person, app: Application) -> list[str]:
    """Why `member` may not vote on `app` (empty: they may)."""
    out = []
    if member.organisation_id is not None and member.organisation_id in organisation_ids(app):
        assert member.organisation is not None
        out.append(f"they belong to {member.organisation.name}, which is on the application")
    if any(m.person_id == member.id for m in app.team):
        out.append("they are on the application's team")
    declared = session.get(Conflict, (app.id, member.id))
    if declared is not None:
        out.append(f"they declared a conflict of interest ({declared.reason})")
    return out


def declare_conflict(session: Session, handle: str, reference: str, reason: str) -> bool:
    """Record a member's conflict on an application. A vote they already cast is struck out
    (a vote given under a conflict does not count): whether there was one."""
    member = acting(session, handle, "panel_member", "declare a conflict of interest")
    app = application(session, reference)
    if not reason.strip():
        raise UserError("say what the conflict of interest is")
    if session.get(Conflict, (app.id, member.id)) is not None:
        raise NotAllowed(f"{handle} has already declared a conflict on {reference}")
    advance(session, app, "declare_conflict")
    conflict = Conflict(
        application_id=app.id, person_id=member.id, reason=reason.strip(), declared_at=now()
    )
    session.add(conflict)
    struck = session.get(Vote, (app.id, member.id))
    if struck is not None:
        session.delete(struck)
    record(
        session,
        "panel.conflict",
        handle,
        {"application": reference, "reason": conflict.reason, "vote_struck": struck is not None},
    )
    return struck is not None


def vote(session: Session, handle: str, reference: str, choice: str, comment: str = "") -> Vote:
    member = acting(session, handle, "panel_member", "vote")
    app = application(session, reference)
    if choice not in ("approve", "refuse"):
        raise UserError(f"a vote is approve or refuse (got {choice!r})")
    if ("vote", app.state) not in TRANSITIONS:
        raise NotAllowed(refusal(app, "vote"))
    reasons = conflicts_of(session, member, app)
    if reasons:
        raise NotAllowed(f"{handle} cannot vote on {reference}: {'; '.join(reasons)}")
    if session.get(Vote, (app.id, member.id)) is not None:
        raise NotAllowed(f"{handle} has already voted on {reference}: each member votes once")
    advance(session, app, "vote")
    cast = Vote(
        application_id=app.id,
        person_id=member.id,
        vote=choice,
        comment=comment.strip(),
        cast_at=now(),
    )
    session.add(cast)
    record(session, "panel.vote", handle, {"application": reference, "vote": choice})
    return cast


def counted_votes(session: Session, app: Application) -> list[Vote]:
    """The votes that count: cast by members still free of conflict."""
    votes = session.scalars(sa.select(Vote).where(Vote.application_id == app.id))
    return [v for v in votes if not conflicts_of(session, v.person, app)]


def decide(
    session: Session,
    handle: str,
    reference: str,
    minutes: str,
    conditions: list[str] | None = None,
    quorum: int = DEFAULT_QUORUM,
) -> Decision:
    """Record the panel's decision: what the counted votes say, once at least `quorum` members
    have voted. Minutes are required; they are published with the decision."""
    recorder = acting(session, handle, "administrator", "record a panel decision")
    app = application(session, reference)
    if ("decide", app.state) not in TRANSITIONS:
        raise NotAllowed(refusal(app, "decide"))
    if quorum < 1:
        raise UserError(f"the quorum must be at least 1 (got {quorum})")
    votes = counted_votes(session, app)
    if len(votes) < quorum:
        raise NotAllowed(
            f"cannot decide {reference} yet: {len(votes)} of the {quorum} votes a quorum needs "
            "have been cast by members free of conflict"
        )
    if not minutes.strip():
        raise UserError("a decision needs its minutes: they are published with it")
    for_ = sum(v.vote == "approve" for v in votes)
    against = len(votes) - for_
    outcome = "approved" if for_ > against else "refused"
    conditions = [c.strip() for c in conditions or [] if c.strip()]
    if outcome == "refused" and conditions:
        raise UserError(
            f"the panel voted to refuse {reference} ({for_} for, {against} against): "
            "conditions go with an approval only"
        )
    advance(session, app, "decide", to=outcome)
    if outcome == "refused":
        app.outcome_reason = (
            f"by the review panel, {for_} for and {against} against (see the minutes)"
        )
    decision = Decision(
        application_id=app.id,
        outcome=outcome,
        minutes=minutes.strip(),
        conditions=conditions,
        votes_for=for_,
        votes_against=against,
        quorum=quorum,
        recorded_by_id=recorder.id,
        decided_at=now(),
    )
    session.add(decision)
    record(
        session,
        "panel.decision",
        handle,
        {
            **public(app),
            "outcome": outcome,
            "votes_for": for_,
            "votes_against": against,
            "conditions": conditions,
        },
    )
    return decision
