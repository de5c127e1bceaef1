"""Publishing the event record: every central event becomes a public log entry, once.

The central services record what they do in the `events` table (gpdpr.db.events); `publish`
turns every event not yet published into entries, appends them to the log and signs a new
checkpoint. It runs after each central command (gpdpr.home's --home option arranges it) and at
the end of the demo; `gpdpr log publish` runs it by hand.

An entry is canonical JSON:

    {"seq": 41, "type": "tre.run", "time": "2026-12-05T13:24:50Z",
     "actor": {"role": "researcher", "organisation": "University of Leeds"},
     "details": {"run": "RUN-000001", "project": "APP-2026-0001", ...}}

`KINDS` below says what each type means and which of the event's details are published (any
other detail is left out). People are never in an entry: actors appear as their role and
organisation, never by name or handle, and three kinds that concern one patient each are
published only as counts:

- opt-outs set and withdrawn, and the custodian's pseudonym look-ups, as one entry per
  (UTC) day, published once the day is over, so no entry's time points at one person's act;
- erasures as one entry per erasure cycle (lake version): how many people and how many rows in
  all, and only when at least ERASURE_THRESHOLD people were erased in the cycle ("fewer than 10"
  otherwise, and no rows): a count per table, or of a handful of people, could single one out.

Exactly once. Each event row records the `seq` of the entry that publishes it (`log_seq`, in the
central database only). One publish: under a lock, open and verify the log (refusing a damaged
one); forget `log_seq`s at or beyond the log's size (written by a publish that crashed before
its entries reached the file); build entries for every unpublished event, store their `seq`s
and commit; append the entries (fsync); sign. A crash anywhere leaves either the events
unpublished (published next time) or published once.
"""

from __future__ import annotations

import fcntl
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr import durable, spec
from gpdpr.db.events import record
from gpdpr.db.models import Event, as_utc, core, now
from gpdpr.transparency import cosigning, store
from gpdpr.transparency.checkpoint import Checkpoint

LOG_FOLDER = "log"
LOCK_FILE = ".log.lock"
SERVICE_ACTOR = "gpdpr"


@dataclass(frozen=True)
class Kind:
    role: str  # who acts, as the entry says
    meaning: str
    fields: tuple[str, ...]  # the details published


_APP = ("application", "title", "organisations", "purpose", "commercial")
_REID = ("request", "project", "legal_basis", "identities", "status")

# Every event kind and what its entry means. A kind missing here is refused (see `entry_for`).
KINDS: dict[str, Kind] = {
    "package.loaded": Kind(
        "collector",
        "a practice's package was verified and loaded into the lake: rows per table, people "
        "left out for a Type 1 opt-out, its Type 1 statements not heard by reason (not_registered: "
        "about someone it does not list as registered with it), records replaced, deleted, or "
        "stale",
        (
            "package_id",
            "practice",
            "kind",
            "rows",
            "type1_dropped",
            "type1_ignored",
            "replaced",
            "deleted",
            "stale",
            "lake_version",
        ),
    ),
    "package.refused": Kind(
        "collector", "a package was refused and nothing of it loaded; why", ("package", "reason")
    ),
    "custodian.project_key": Kind(
        "key custodian", "a project's pseudonym key was derived for a run", ("project",)
    ),
    "reid.requested": Kind(
        "re-identification requester",
        "re-identification of some people in a project was asked for, under a legal basis",
        _REID,
    ),
    "reid.approved": Kind("re-identification approver", "an approval", (*_REID, "approvals")),
    "reid.fulfilled": Kind("key custodian", "an approved request was carried out", _REID),
    "reid.refused": Kind("re-identification approver", "a request was refused", _REID),
    "governance.organisation": Kind(
        "governance administrator", "an organisation was registered", ("organisation", "kind")
    ),
    "governance.person": Kind(
        "governance administrator",
        "someone was given roles (who is not published)",
        ("organisation", "roles"),
    ),
    "application.submitted": Kind("applicant", "an application was submitted", (*_APP, "flags")),
    "application.refused": Kind(
        "automatic checks", "an application failed the automatic checks", (*_APP, "reason")
    ),
    "application.withdrawn": Kind("applicant", "an application was withdrawn", _APP),
    "review.started": Kind("panel secretary", "the panel began its review", (*_APP, "flags")),
    "panel.conflict": Kind(
        "panel member", "a panel member declared a conflict", ("application", "vote_struck")
    ),
    "panel.vote": Kind("panel member", "a panel member voted", ("application", "vote")),
    "panel.decision": Kind(
        "panel secretary",
        "the panel decided an application",
        (*_APP, "outcome", "votes_for", "votes_against", "conditions"),
    ),
    "agreement.issued": Kind(
        "governance administrator",
        "a data sharing agreement started",
        (*_APP, "agreement", "starts_on", "ends_on", "tables", "national_data_opt_out"),
    ),
    "agreement.revoked": Kind(
        "governance administrator",
        "an agreement was revoked",
        ("agreement", "application", "reason"),
    ),
    "agreement.expired": Kind("service", "an agreement reached its end", ("agreement", "ended_on")),
    "tre.run": Kind(
        "researcher",
        "a definition ran in the research environment under an agreement: its SHA-256 and the "
        "lake version it read",
        (
            "run",
            "project",
            "agreement",
            "definition_sha256",
            "lake_version",
            "engine",
            "status",
        ),
    ),
    "release.requested": Kind(
        "researcher",
        "a run's files were put to the output checkers",
        ("request", "run", "project", "agreement", "title", "files"),
    ),
    "release.reviewed": Kind(
        "output checker",
        "an output checker approved, rejected or returned a file",
        ("request", "file", "decision"),
    ),
    "release.published": Kind(
        "output checkers",
        "files approved by two output checkers were released and published",
        ("agreement", "title", "code_sha256", "files", "run", "lake_version"),
    ),
    "spec.version": Kind(
        "service",
        "the specification the service enforces, or the versions it accepts, changed",
        ("version", "sha256", "released"),
    ),
}
DAILY = {
    "optout.set": "optout.daily",
    "optout.withdrawn": "optout.daily",
    "custodian.pseudonym": "custodian.pseudonym.daily",
}
ERASURE = "erasure"
ERASURE_THRESHOLD = 10
# What the aggregate entries mean (documented with the rest in the README).
AGGREGATES = {
    "optout.daily": "opt-outs set and withdrawn on one day, by type and by where they came from",
    "custodian.pseudonym.daily": "the custodian's look-ups of a pseudonym on one day, by purpose",
    "erasure": "one erasure cycle: people erased and rows removed in all (only when at least "
    f"{ERASURE_THRESHOLD} people were), the lake version",
}


@dataclass
class Published:
    """What one publish did."""

    appended: int
    held: int  # events waiting for their day to end
    checkpoint: Checkpoint | None
    notes: list[str] = field(default_factory=list)


def log_folder(home: Path) -> Path:
    return home / LOG_FOLDER


@contextmanager
def locked(home: Path) -> Iterator[None]:
    """One publisher at a time per home."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(
    home: Path, engine: sa.Engine, at: datetime | None = None, keys: Path | None = None
) -> Published:
    """Append every unpublished event to the log and sign it (see the module's docstring)."""
    with durable.disk_errors("publishing to the transparency log", PUBLISH_ADVICE):
        return _publish(home, engine, as_utc(at or now()), keys)


PUBLISH_ADVICE = (
    "The events are kept and the log is as it was or signed to a later point; free space (or "
    "fix the permissions) and run `gpdpr log publish`"
)


def _publish(home: Path, engine: sa.Engine, when: datetime, keys: Path | None) -> Published:
    with locked(home):
        writer = store.open_verified(log_folder(home), keys or home / "keys")
        note_spec(engine, when)
        with Session(engine) as session, session.begin():
            session.execute(
                sa.update(Event).where(Event.log_seq >= writer.size).values(log_seq=None)
            )
            pending = list(
                session.scalars(sa.select(Event).where(Event.log_seq.is_(None)).order_by(Event.id))
            )
            entries, members = build(session, pending, when.date())
            numbered = [
                {"event": event_id, "seq": writer.size + offset}
                for offset, ids in enumerate(members)
                for event_id in ids
            ]
            if numbered:
                table = core(Event)
                session.execute(
                    sa.update(table)
                    .where(table.c.id == sa.bindparam("event"))
                    .values(log_seq=sa.bindparam("seq")),
                    numbered,
                )
        durable.step("log events numbered")
        writer.append(entries)
        signed = writer.contents.checkpoint
        keys = keys or home / "keys"
        witnessed = cosigning.witnessed(keys)
        moment = int(time.time())  # a witness's clock, not the publish's `at` (events' day)
        if (
            entries
            or signed is None
            or signed.size != writer.size
            or (witnessed and cosigning.stale(signed, moment))
        ):
            signed = writer.sign()
            if witnessed:
                gathered = cosigning.gather(writer, keys, signed, moment)
                signed = writer.publish(gathered.checkpoint)
                writer.contents.notes.extend(gathered.notes)
        held = len(pending) - sum(len(ids) for ids in members)
        return Published(len(entries), held, signed, writer.contents.notes)


def note_spec(engine: sa.Engine, at: datetime) -> None:
    """Record a `spec.version` event when the specification enforced, or the versions accepted,
    differ from what was last published (so the first publish records the starting point)."""
    shipped = spec.shipped()
    current = {
        "version": shipped.version,
        "sha256": shipped.sha256,
        "released": spec.released_versions(),
    }
    with Session(engine) as session, session.begin():
        last = session.scalar(
            sa.select(Event.details)
            .where(Event.kind == "spec.version")
            .order_by(Event.id.desc())
            .limit(1)
        )
        if last != current:
            record(session, "spec.version", SERVICE_ACTOR, current, at)


def build(
    session: Session, events: list[Event], today: date
) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The entries for these events (in order of their first event), and each entry's events.
    Events of a day-counted kind from `today` are left for later."""
    people = _organisations(session)
    slots: list[dict[str, Any]] = []
    members: list[list[int]] = []
    groups: dict[tuple[str, str], int] = {}
    for event in events:
        at = as_utc(event.at)
        if event.kind in DAILY:
            if at.date() >= today:
                continue
            key = (DAILY[event.kind], at.date().isoformat())
        elif event.kind == ERASURE:
            key = (ERASURE, str(event.details.get("lake_version")))
        else:
            slots.append(entry_for(event, people))
            members.append([event.id])
            continue
        if key not in groups:
            groups[key] = len(slots)
            slots.append(_aggregate_start(*key))
            members.append([])
        index = groups[key]
        _aggregate_add(slots[index], event)
        members[index].append(event.id)
    return [_coarsened(slot) for slot in slots], members


def _coarsened(entry: dict[str, Any]) -> dict[str, Any]:
    """An erasure entry as published: totals only, and none for a handful of people."""
    if entry["type"] != ERASURE:
        return entry
    found = entry["details"]
    details: dict[str, Any] = {"lake_version": found["lake_version"]}
    if found["people"] >= ERASURE_THRESHOLD:
        details |= {"people": found["people"], "rows_removed": found["rows_removed"]}
    else:
        details["people"] = f"fewer than {ERASURE_THRESHOLD}"
    return {**entry, "details": details}


def entry_for(event: Event, organisations: dict[str, str | None]) -> dict[str, Any]:
    kind = KINDS.get(event.kind)
    if kind is None:
        raise ValueError(f"event kind {event.kind!r} has no published meaning in KINDS")
    handles = (
        [h.strip() for h in event.actor.split(",")]
        if event.kind == "release.published"
        else [event.actor]
    )
    found = sorted({o for h in handles if (o := organisations.get(h))})
    return {
        "type": event.kind,
        "time": _time(as_utc(event.at)),
        "actor": {"role": kind.role, "organisation": "; ".join(found) or None},
        "details": {k: _public(event.details[k]) for k in kind.fields if k in event.details},
    }


_PATH = re.compile(r"(?:/[^/\s:'\"]+)+/([^/\s:'\"]+)")


def _public(value: Any) -> Any:
    """A detail as published: a folder on the service's disks named by its last part only
    (a refusal's reason may name where the package was)."""
    return _PATH.sub(r"\1", value) if isinstance(value, str) else value


def _aggregate_start(kind: str, key: str) -> dict[str, Any]:
    actor = {"role": "service", "organisation": None}
    if kind == "optout.daily":
        details: dict[str, Any] = {
            "day": key,
            "type1": {"set": 0, "withdrawn": 0},
            "ndoo": {"set": 0, "withdrawn": 0},
            "sources": {},
        }
        return {
            "type": kind,
            "time": key,
            "actor": {**actor, "role": "opt-out registry"},
            "details": details,
        }
    if kind == "custodian.pseudonym.daily":
        return {
            "type": kind,
            "time": key,
            "actor": {**actor, "role": "key custodian"},
            "details": {"day": key, "lookups": {}},
        }
    details = {
        "lake_version": None if key == "None" else int(key),
        "people": 0,
        "rows_removed": 0,
    }
    return {"type": kind, "time": "", "actor": {**actor, "role": "collector"}, "details": details}


def _aggregate_add(entry: dict[str, Any], event: Event) -> None:
    details, found = entry["details"], event.details
    if entry["type"] == "optout.daily":
        kind = found.get("opt_out", "type1")
        action = event.kind.removeprefix("optout.")
        details.setdefault(kind, {"set": 0, "withdrawn": 0})[action] += 1
        source = str(found.get("source", "unknown"))
        details["sources"][source] = details["sources"].get(source, 0) + 1
    elif entry["type"] == "custodian.pseudonym.daily":
        purpose = str(found.get("purpose", "unknown"))
        details["lookups"][purpose] = details["lookups"].get(purpose, 0) + 1
    else:
        details["people"] += 1
        details["rows_removed"] += int(found.get("rows_removed", 0))
        entry["time"] = max(entry["time"], _time(as_utc(event.at)))


def _organisations(session: Session) -> dict[str, str | None]:
    """Each person's handle -> their organisation's name (how actors are published)."""
    from gpdpr.governance.models import Organisation, Person

    rows = session.execute(
        sa.select(Person.handle, Organisation.name).outerjoin(
            Organisation, Organisation.id == Person.organisation_id
        )
    )
    out: dict[str, str | None] = defaultdict(lambda: None)
    out.update({handle: name for handle, name in rows})
    return out


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
