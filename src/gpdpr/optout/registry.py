"""The opt-out registry: each person's Type 1 and National Data Opt-out, as a history of changes.

The registry knows people only by their lake pseudonym (the one every practice makes from the NHS
number); it never sees or stores an NHS number. A change arrives from three directions: online or
by proxy (through the custodian, who turns the NHS number into the pseudonym), centrally, or in a
practice's extract manifest (its Type 1 lists). History is kept whole, so a person can see every
change and the collector can prove each erasure with a receipt.

Who may say what (see `decide`, the one place the rule is written): each source speaks for
itself. The person's own channel (online, proxy, or the centre on their behalf) is one source; each
practice is another, and a practice may only withdraw what it itself recorded. A person dissents
while any source's latest statement is a dissent, unless the person's own channel withdrew later
than that practice's dissent: a practice's record never overrides a later online statement. Where
dates tie, the dissent stands.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import pseudonym_hash
from gpdpr.db.events import record, record_many
from gpdpr.db.models import (
    DeletionReceipt,
    OptOutEvent,
    PracticeType1,
    as_utc,
    core,
    naive_utc,
    now,
)
from gpdpr.db.transactions import retrying, writing
from gpdpr.errors import UserError

KINDS = ("type1", "ndoo")
SOURCES = ("online", "proxy", "central", "practice")
SET, WITHDRAWN, NEVER = "set", "withdrawn", "never"
_PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@dataclass(frozen=True)
class _Change:
    """One opt-out event about to be written."""

    pseudonym: str
    kind: str
    action: str
    effective_at: datetime
    source: str
    source_ref: str | None

    def row(self, recorded_at: datetime) -> dict[str, Any]:
        return {
            "pseudonym": self.pseudonym,
            "kind": self.kind,
            "action": self.action,
            "effective_at": self.effective_at,
            "recorded_at": recorded_at,
            "source": self.source,
            "source_ref": self.source_ref,
        }

    def event(self, extra: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any]]:
        """The public event: the person by hash only."""
        details: dict[str, Any] = {
            "person": pseudonym_hash(self.pseudonym),
            "opt_out": self.kind,
            "source": self.source,
            "source_ref": self.source_ref,
            "effective_at": self.effective_at.isoformat(),
            **(extra or {}),
        }
        actor = self.source if self.source_ref is None else f"{self.source}:{self.source_ref}"
        return f"optout.{self.action}", actor, details


@dataclass(frozen=True)
class Statement:
    """One source's word about one person's opt-out of one kind (an opt-out event)."""

    id: int
    action: str
    effective_at: datetime
    source: str
    source_ref: str | None

    @property
    def channel(self) -> str:
        return channel_of(self.source, self.source_ref)


def channel_of(source: str, source_ref: str | None) -> str:
    """Whose statement it is: each practice its own, every other source the person's."""
    return f"practice:{source_ref}" if source == "practice" else PERSON


PERSON = "person"


def decide(latest: Iterable[Statement]) -> Statement | None:
    """The statement that decides a person's opt-out of one kind, given each source's latest
    statement (one per channel): a dissent when they are opted out, else the latest withdrawal;
    None if no source ever said anything.

    - The person's own latest statement (online, proxy or central) stands as they made it.
    - A practice's dissent stands unless the person's own channel withdrew strictly later (a tie
      keeps the dissent). A practice's withdrawal undoes only that practice's own dissent (it is
      that practice's latest statement); it never touches the person's own or another practice's.
    - Of several dissents standing, the first recorded decides (so another practice's dissent
      arriving later asks for no new erasure).
    """
    statements = list(latest)
    own = next((s for s in statements if s.channel == PERSON), None)
    withdrawn_at = own.effective_at if own is not None and own.action == WITHDRAWN else None
    standing = [
        s
        for s in statements
        if s.action == SET
        and (s.channel == PERSON or withdrawn_at is None or s.effective_at >= withdrawn_at)
    ]
    if standing:
        return min(standing, key=lambda s: s.id)
    return max(statements, key=lambda s: (s.effective_at, s.id), default=None)


class Registry:
    """Every person's opt-outs, over the central database. Each change is an opt-out event
    (the history) and a public event naming the person by hash only."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # ---- one person at a time ------------------------------------------------------------------

    def set(
        self,
        pseudonym: str,
        kind: str,
        source: str,
        source_ref: str | None = None,
        at: datetime | None = None,
        request_id: str | None = None,
    ) -> bool:
        """Opt the person out; True if that changed their current state (else nothing is
        recorded: setting twice is harmless). A `request_id` (see `_change`) makes the same
        request, sent again, record nothing."""
        return self._change(pseudonym, kind, SET, source, source_ref, at, request_id)

    def withdraw(
        self,
        pseudonym: str,
        kind: str,
        source: str,
        source_ref: str | None = None,
        at: datetime | None = None,
        request_id: str | None = None,
    ) -> bool:
        """Opt the person back in; True if that changed their current state (withdrawing an
        opt-out never made, or already withdrawn, records nothing)."""
        return self._change(pseudonym, kind, WITHDRAWN, source, source_ref, at, request_id)

    def _change(
        self,
        pseudonym: str,
        kind: str,
        action: str,
        source: str,
        source_ref: str | None,
        at: datetime | None,
        request_id: str | None = None,
    ) -> bool:
        """Record the change if it changes the person's current state. Exactly once, however
        many requests arrive together: the read of the current state and the write are one
        serialisable transaction (retried when the database reports a conflict), and a
        `request_id` already recorded (the same form sent twice) changes nothing."""
        _check_pseudonym(pseudonym)
        _check_choice("opt-out type", kind, KINDS)
        _check_choice("source", source, SOURCES)
        if request_id is not None and not _REQUEST_ID.match(request_id):
            raise UserError("a request id is 16 to 64 letters, digits, '-' or '_'")
        change = _Change(pseudonym, kind, action, as_utc(at or now()), source, source_ref)
        try:
            return retrying(lambda: self._record_change(change, request_id))
        except sa.exc.IntegrityError:
            if request_id is None:
                raise
            return False  # the same request, recorded by its twin at the same moment

    def _record_change(self, change: _Change, request_id: str | None) -> bool:
        with Session(writing(self.engine)) as session, session.begin():
            if request_id is not None and session.scalar(
                sa.select(OptOutEvent.id).where(OptOutEvent.request_id == request_id)
            ):
                return False
            latest = _latest_by_channel(session, change.pseudonym, change.kind)
            mine = latest.get(channel_of(change.source, change.source_ref))
            # An event back-dated before its source's latest one would not become current.
            if mine is not None and change.effective_at < mine.effective_at:
                return False
            proposed = Statement(
                _UNRECORDED, change.action, change.effective_at, change.source, change.source_ref
            )
            after = {**latest, proposed.channel: proposed}
            # Recorded when it changes what this source says (a dissent made online stays even
            # while a practice's dissent already opts the person out) or what the rule decides.
            if _dissents(mine) == _dissents(proposed) and _dissents(
                decide(latest.values())
            ) == _dissents(decide(after.values())):
                return False
            event = OptOutEvent(**change.row(now()), request_id=request_id)
            session.add(event)
            session.flush()
            kind_, actor, details = change.event({"opt_out_event": event.id})
            record(session, kind_, actor, details)
        return True

    def status(self, pseudonym: str) -> dict[str, dict[str, Any]]:
        """For each kind: the current `state` (set / withdrawn / never), `since` when, its
        `source` and `source_ref`, and the whole `history`, oldest first."""
        _check_pseudonym(pseudonym)
        with Session(self.engine) as session:
            rows = session.scalars(
                sa.select(OptOutEvent)
                .where(OptOutEvent.pseudonym == pseudonym)
                .order_by(OptOutEvent.effective_at, OptOutEvent.id)
            ).all()
        return {kind: _kind_status([r for r in rows if r.kind == kind]) for kind in KINDS}

    def current(self, kind: str) -> dict[str, Statement]:
        """Each person's deciding statement of one kind (see `decide`), everyone ever heard of."""
        with Session(self.engine) as session:
            return _current(session, kind)

    # ---- a practice's Type 1 lists -------------------------------------------------------------

    def apply_practice_assertions(
        self,
        package_id: str,
        practice: str,
        as_of: datetime,
        active: list[str],
        withdrawn: list[str],
    ) -> tuple[int, int]:
        """Apply the Type 1 lists from one practice's extract manifest; returns how many opt-out
        events were recorded (set, withdrawn).

        `active` holds every patient whose latest opt-out code at the practice is a dissent,
        `withdrawn` every patient whose latest code is a withdrawal, however long ago; a patient
        on neither list is asserted nothing. The rules:

        - One `practice_type1` row per (pseudonym, practice) holds the practice's latest
          assertion and its `as_of` (the package's extract time).
        - An assertion older than the stored `as_of` is ignored: packages may arrive out of order.
        - When an assertion changes the row's state, an opt-out event is recorded with source
          "practice", source_ref the practice, effective at `as_of`.
        - Except a first-ever "withdrawn" (no earlier row from this practice): only the row is
          written, no event. A withdrawal means something only after a dissent; otherwise a
          years-old withdrawal at the practice would override a newer opt-out made online.
        - Re-applying the same package changes nothing.

        Bulk: one query reads the practice's rows, and writes are batched, so a practice's
        whole list costs a handful of statements whatever its length."""
        if not package_id.strip() or not practice.strip():
            raise UserError("a practice's Type 1 lists need its package id and ODS code")
        asserted = _assertions(active, withdrawn, practice)
        when = as_utc(as_of)

        def apply() -> list[_Change]:
            with Session(writing(self.engine)) as session, session.begin():
                stored = _practice_rows(session, practice)
                inserts, updates, changes = _plan(asserted, stored, when, practice, package_id)
                _write_practice_rows(
                    session, inserts, updates, naive_utc(when), package_id, practice
                )
                if changes:
                    recorded = naive_utc(now())
                    rows = [c.row(recorded) for c in changes]
                    session.execute(sa.insert(core(OptOutEvent)), rows)
                    extra = {"package_id": package_id}
                    record_many(session, (c.event(extra) for c in changes))
            return changes

        changes = retrying(apply)
        sets = sum(c.action == SET for c in changes)
        return sets, len(changes) - sets

    # ---- who is opted out now ------------------------------------------------------------------

    def active_type1(self) -> builtins.set[str]:
        """Every pseudonym whose current Type 1 state is set: erase them, load nothing of them."""
        return self._active("type1")

    def active_ndoo(self) -> builtins.set[str]:
        """Every pseudonym whose current National Data Opt-out is set: leave them out of
        releases."""
        return self._active("ndoo")

    def _active(self, kind: str) -> builtins.set[str]:
        return {p for p, s in self.current(kind).items() if s.action == SET}

    def restored_type1(self, since: datetime | None = None) -> builtins.set[str]:
        """Everyone whose Type 1 opt-out is now withdrawn, the withdrawal effective after `since`
        (all of them when None): the centre erased their history and asks practices to send it
        again (see gpdpr.practice.resend)."""
        after = None if since is None else as_utc(since)
        return {
            p
            for p, s in self.current("type1").items()
            if s.action == WITHDRAWN and (after is None or as_utc(s.effective_at) > after)
        }

    # ---- deletion receipts ---------------------------------------------------------------------

    def awaiting_receipt(self) -> dict[str, int]:
        """Active Type 1 pseudonyms whose latest set event has no deletion receipt yet, each with
        that event's id (the collector erases them, then calls `record_receipt`)."""
        with Session(self.engine) as session:
            current = _current(session, "type1")
            answered = set(session.scalars(sa.select(DeletionReceipt.opt_out_event_id)))
        return {p: s.id for p, s in current.items() if s.action == SET and s.id not in answered}

    def record_receipt(
        self,
        pseudonym: str,
        tables: dict[str, int],
        lake_version: int,
        opt_out_event_id: int,
        at: datetime | None = None,
    ) -> DeletionReceipt:
        """Record that a person's rows were erased from the lake (the receipt holds the
        pseudonym's hash only), and the public "erasure" event."""
        [receipt] = self.record_receipts([(pseudonym, tables, opt_out_event_id)], lake_version, at)
        return receipt

    def record_receipts(
        self,
        answers: list[tuple[str, dict[str, int], int]],
        lake_version: int,
        at: datetime | None = None,
    ) -> list[DeletionReceipt]:
        """`record_receipt` for everyone one erasure cycle answered, (pseudonym, rows removed
        per table, the set event answered) each, in one transaction: all or none."""
        for pseudonym, tables, _ in answers:
            _check_pseudonym(pseudonym)
            if any(not isinstance(n, int) or n < 0 for n in tables.values()):
                raise UserError(
                    "a deletion receipt counts rows removed per table: whole numbers >= 0"
                )
        erased_at = as_utc(at or now())
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            ids = [event_id for _, _, event_id in answers]
            events = {
                e.id: e
                for e in session.scalars(sa.select(OptOutEvent).where(OptOutEvent.id.in_(ids)))
            }
            receipts = []
            for pseudonym, tables, event_id in answers:
                answered = events.get(event_id)
                if answered is None or (answered.pseudonym, answered.kind, answered.action) != (
                    pseudonym,
                    "type1",
                    SET,
                ):
                    raise UserError(
                        f"opt-out event {event_id} is not this person's Type 1 opt-out: "
                        "a receipt answers the set event it carried out (see awaiting_receipt)"
                    )
                receipts.append(
                    DeletionReceipt(
                        pseudonym_hash=pseudonym_hash(pseudonym),
                        tables=dict(sorted(tables.items())),
                        rows_removed=sum(tables.values()),
                        lake_version=lake_version,
                        erased_at=erased_at,
                        opt_out_event_id=event_id,
                    )
                )
            session.add_all(receipts)
            session.flush()
            record_many(session, (("erasure", "collector", _receipt_view(r)) for r in receipts))
        return receipts

    def receipts(self) -> list[dict[str, Any]]:
        """Every deletion receipt, oldest first, as published."""
        with Session(self.engine) as session:
            rows = session.scalars(sa.select(DeletionReceipt).order_by(DeletionReceipt.id)).all()
            return [_receipt_view(r) for r in rows]


# ---- helpers ---------------------------------------------------------------------------------


def _check_pseudonym(pseudonym: str) -> None:
    """A lake pseudonym is 64 hex digits; this also keeps an NHS number out of the registry."""
    if not isinstance(pseudonym, str) or not _PSEUDONYM.match(pseudonym):
        raise UserError(
            "the registry takes a lake pseudonym (64 lower-case hex digits), never an NHS "
            "number: find a person's pseudonym through the custodian"
        )


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{value!r} is not a valid {what}: use one of {', '.join(allowed)}")


_UNRECORDED = 1 << 62  # the id a statement not yet recorded would rank by: after every other


def _dissents(statement: Statement | None) -> bool:
    return statement is not None and statement.action == SET


def _statement(event: OptOutEvent) -> Statement:
    return Statement(event.id, event.action, event.effective_at, event.source, event.source_ref)


def _latest_by_channel(session: Session, pseudonym: str, kind: str) -> dict[str, Statement]:
    rows = session.scalars(
        sa.select(OptOutEvent)
        .where(OptOutEvent.pseudonym == pseudonym, OptOutEvent.kind == kind)
        .order_by(OptOutEvent.effective_at, OptOutEvent.id)
    ).all()
    return _by_channel(_statement(r) for r in rows)


def _by_channel(ordered: Iterable[Statement]) -> dict[str, Statement]:
    """Each channel's latest statement, from statements oldest first."""
    return {s.channel: s for s in ordered}


def _current(session: Session, kind: str) -> dict[str, Statement]:
    """Each person's deciding statement of one kind: the database gives each source's latest
    statement about each person, and `decide` (in Python, the one place the rule is written)
    picks among them."""
    channel = sa.case(
        (
            OptOutEvent.source == "practice",
            sa.literal("practice:") + sa.func.coalesce(OptOutEvent.source_ref, ""),
        ),
        else_=PERSON,
    )
    ranked = (
        sa.select(
            OptOutEvent.pseudonym,
            OptOutEvent.id,
            OptOutEvent.action,
            OptOutEvent.effective_at,
            OptOutEvent.source,
            OptOutEvent.source_ref,
            sa.func.row_number()
            .over(
                partition_by=(OptOutEvent.pseudonym, channel),
                order_by=(OptOutEvent.effective_at.desc(), OptOutEvent.id.desc()),
            )
            .label("rank"),
        )
        .where(OptOutEvent.kind == kind)
        .subquery()
    )
    latest: dict[str, list[Statement]] = {}
    query = sa.select(ranked).where(ranked.c.rank == 1)
    for row in session.execute(query):
        statement = Statement(
            row.id, row.action, as_utc(row.effective_at), row.source, row.source_ref
        )
        latest.setdefault(row.pseudonym, []).append(statement)
    decided = {p: decide(statements) for p, statements in latest.items()}
    return {p: s for p, s in decided.items() if s is not None}


def _kind_status(history: list[OptOutEvent]) -> dict[str, Any]:
    """The state the rule decides (`decide`), and the whole history."""
    deciding = decide(_by_channel(_statement(e) for e in history).values())
    latest = None if deciding is None else next(e for e in history if e.id == deciding.id)
    return {
        "state": NEVER if latest is None else latest.action,
        "since": None if latest is None else latest.effective_at,
        "source": None if latest is None else latest.source,
        "source_ref": None if latest is None else latest.source_ref,
        "history": [
            {
                "id": e.id,
                "action": e.action,
                "effective_at": e.effective_at,
                "recorded_at": e.recorded_at,
                "source": e.source,
                "source_ref": e.source_ref,
            }
            for e in history
        ],
    }


def _assertions(active: Iterable[str], withdrawn: Iterable[str], practice: str) -> dict[str, str]:
    """pseudonym -> asserted state; refuses a malformed or contradictory list."""
    asserted = dict.fromkeys(active, SET)
    for pseudonym in withdrawn:
        if asserted.get(pseudonym) == SET:
            raise UserError(
                f"{practice}'s manifest lists a patient as both opted out and withdrawn; "
                "the package is damaged: ask the practice to extract again"
            )
        asserted[pseudonym] = WITHDRAWN
    bad = sum(1 for p in asserted if not _PSEUDONYM.match(p))
    if bad:
        raise UserError(
            f"{practice}'s Type 1 lists hold {bad} entries that are not pseudonyms (64 hex "
            "digits); the package is damaged: ask the practice to extract again"
        )
    return asserted


def _practice_rows(session: Session, practice: str) -> dict[str, tuple[str, datetime]]:
    rows = session.execute(
        sa.select(PracticeType1.pseudonym, PracticeType1.state, PracticeType1.as_of).where(
            PracticeType1.practice == practice
        )
    )
    return {p: (state, as_of) for p, state, as_of in rows}


def _plan(
    asserted: dict[str, str],
    stored: dict[str, tuple[str, datetime]],
    as_of: datetime,
    practice: str,
    package_id: str,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[_Change]]:
    """(pseudonym, state) rows to insert and to update, and the opt-out events to record (see
    `Registry.apply_practice_assertions` for the rules)."""
    inserts: list[tuple[str, str]] = []
    updates: list[tuple[str, str]] = []
    changes: list[_Change] = []
    for pseudonym, state in asserted.items():
        earlier = stored.get(pseudonym)
        if earlier is None:
            inserts.append((pseudonym, state))
            changed = state == SET  # a first-ever withdrawal records no event
        else:
            old_state, old_as_of = earlier
            if as_of < old_as_of or (as_of == old_as_of and state == old_state):
                continue  # stale, or this very assertion again
            updates.append((pseudonym, state))
            changed = state != old_state
        if changed:
            changes.append(_Change(pseudonym, "type1", state, as_of, "practice", practice))
    return inserts, updates, changes


def _write_practice_rows(
    session: Session,
    inserts: list[tuple[str, str]],
    updates: list[tuple[str, str]],
    as_of: datetime,
    package_id: str,
    practice: str,
) -> None:
    """Bulk writes of a practice's rows (as_of given as naive UTC, as stored)."""
    table = core(PracticeType1)
    if inserts:
        session.execute(
            sa.insert(table),
            [
                {
                    "pseudonym": p,
                    "practice": practice,
                    "state": s,
                    "as_of": as_of,
                    "package_id": package_id,
                }
                for p, s in inserts
            ],
        )
    if updates:
        statement = (
            sa.update(table)
            .where(table.c.practice == practice, table.c.pseudonym == sa.bindparam("who"))
            .values(state=sa.bindparam("new_state"), as_of=as_of, package_id=package_id)
        )
        session.execute(statement, [{"who": p, "new_state": s} for p, s in updates])


def _receipt_view(receipt: DeletionReceipt) -> dict[str, Any]:
    return {
        "receipt": receipt.id,
        "pseudonym_hash": receipt.pseudonym_hash,
        "tables": receipt.tables,
        "rows_removed": receipt.rows_removed,
        "lake_version": receipt.lake_version,
        "erased_at": as_utc(receipt.erased_at).isoformat(),
    }
