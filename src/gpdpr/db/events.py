"""The event record: one row per thing that happened centrally, which the transparency log
publishes. Because it is published, a person appears in it only as `pseudonym_hash(pseudonym)`;
`record` refuses details that carry anything reading as an NHS number: a last guard against a
careless caller, or a number typed into a purpose or a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.models import Event, core, naive_utc, now
from gpdpr.errors import UserError
from gpdpr.identifiers import is_valid_nhs_number

# Every kind of event there is. The transparency log publishes each with its meaning, so a kind
# not listed here is refused rather than published unexplained: add new kinds here.
KINDS = (
    "package.loaded",
    "package.refused",
    "optout.set",
    "optout.withdrawn",
    "erasure",
    "custodian.pseudonym",
    "custodian.project_key",
    "reid.requested",
    "reid.approved",
    "reid.fulfilled",
    "reid.refused",
    "governance.organisation",
    "governance.person",
    "application.submitted",
    "application.refused",
    "application.withdrawn",
    "review.started",
    "panel.conflict",
    "panel.vote",
    "panel.decision",
    "agreement.issued",
    "agreement.revoked",
    "agreement.expired",
    "tre.run",
    "release.requested",
    "release.reviewed",
    "release.published",
    "spec.version",
)
_TEN_DIGITS = re.compile(r"(?<![0-9A-Za-z])\d{3} ?\d{3} ?\d{4}(?![0-9A-Za-z])")


def record(
    session: Session,
    kind: str,
    actor: str,
    details: dict[str, Any],
    at: datetime | None = None,
) -> Event:
    """Add one event to the session (written when the session commits)."""
    event = Event(**_row(kind, actor, details, at))
    session.add(event)
    return event


def record_many(session: Session, rows: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
    """Add many (kind, actor, details) events in one bulk insert; how many were added."""
    at = naive_utc(now())
    values = [_row(kind, actor, details, at) for kind, actor, details in rows]
    if values:
        session.execute(sa.insert(core(Event)), values)
    return len(values)


def _row(kind: str, actor: str, details: dict[str, Any], at: datetime | None) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"event kind {kind!r} is not one of gpdpr.db.events.KINDS: add it there")
    if not actor.strip():
        raise ValueError("an event needs an actor")
    _refuse_nhs_numbers({"actor": actor, "details": details})
    return {"at": now() if at is None else at, "kind": kind, "actor": actor, "details": details}


def _refuse_nhs_numbers(details: dict[str, Any]) -> None:
    """Refuse details that would publish anything that reads as an NHS number: ten digits (as
    3-3-4 or unbroken, not inside a longer word) whose check digit is right."""
    text = orjson.dumps(details, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
    for match in _TEN_DIGITS.finditer(text):
        if is_valid_nhs_number(match.group(0).replace(" ", "")):
            raise UserError(
                "this would publish what reads as an NHS number in the public event record; "
                "leave NHS numbers out of names, purposes and reasons"
            )
