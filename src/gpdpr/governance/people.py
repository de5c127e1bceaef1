"""Organisations and the people who take part, with their roles.

Only an administrator adds organisations and people. The one exception starts a service: while
there is no administrator, the only person who can be added is the first one, added by no one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db.events import record
from gpdpr.db.models import now
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import names
from gpdpr.governance.models import Organisation, Person, PersonRole
from gpdpr.governance.vocabulary import ORGANISATION_KINDS, ROLES

_HANDLE = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def add_organisation(session: Session, by: str, name: str, kind: str) -> Organisation:
    acting(session, by, "administrator", "add an organisation")
    if not name.strip():
        raise UserError("an organisation needs a name")
    name = names.clean(name, "the organisation's name")
    if kind not in ORGANISATION_KINDS:
        raise UserError(f"organisation kind {kind!r} is not one of {', '.join(ORGANISATION_KINDS)}")
    if session.scalar(sa.select(Organisation).where(Organisation.name == name)) is not None:
        raise UserError(f"there is already an organisation called {name!r}")
    looks = names.skeleton(name)
    for (other,) in session.execute(sa.select(Organisation.name)):
        if names.skeleton(other) == looks:
            raise UserError(
                f"{name!r} looks like the organisation {other!r} already here (the same letters "
                "but for case, accents or look-alike characters): if it is that one, use it; "
                "if not, give a name that cannot be mistaken for it"
            )
    organisation = Organisation(name=name, kind=kind, created_at=now())
    session.add(organisation)
    record(session, "governance.organisation", by, {"organisation": name, "kind": kind})
    return organisation


def organisation(session: Session, name: str) -> Organisation:
    found = session.scalar(sa.select(Organisation).where(Organisation.name == names.normal(name)))
    if found is None:
        raise UserError(f"no organisation called {name!r}: add it first (gpdpr governance org add)")
    return found


def add_person(
    session: Session,
    by: str | None,
    handle: str,
    name: str,
    email: str,
    organisation_name: str | None,
    roles: Iterable[str],
) -> Person:
    """Add someone who takes part, as administrator `by` (None only for the first
    administrator). A handle is lower-case letters, digits and . _ -, and names them in
    commands and in the public record."""
    roles = sorted(set(roles))
    if has_administrator(session):
        if by is None:
            raise NotAllowed(f"only an administrator adds people: say who you are to add {handle}")
        acting(session, by, "administrator", "add people")
    elif "administrator" not in roles:
        raise NotAllowed(
            f"there is no administrator yet: the first person added must be one (not {handle}, "
            f"who would be {', '.join(roles) or 'no role'})"
        )
    if not _HANDLE.fullmatch(handle):  # fullmatch: '$' would let a final newline through
        raise UserError(
            f"handle {handle!r} should be 2 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    if not name.strip():
        raise UserError(f"{handle}: a person needs a name")
    name = names.clean(name, f"{handle}'s name")
    if not _EMAIL.fullmatch(email) or not (email.isascii() and email.isprintable()):
        raise UserError(f"{handle}: {email!r} is not an email address")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UserError(f"{handle}: roles must be some of {', '.join(ROLES)} (got {roles})")
    if session.scalar(sa.select(Person).where(Person.handle == handle)) is not None:
        raise UserError(f"there is already someone with the handle {handle!r}")
    org = organisation(session, organisation_name) if organisation_name else None
    if "applicant" in roles and org is None:
        raise UserError(f"{handle}: an applicant applies for an organisation; give theirs")
    person = Person(
        handle=handle,
        name=name.strip(),
        email=email,
        organisation=org,
        created_at=now(),
        role_rows=[PersonRole(role=r) for r in roles],
    )
    session.add(person)
    record(
        session,
        "governance.person",
        by or handle,
        {"handle": handle, "organisation": org.name if org else None, "roles": roles},
    )
    return person


def has_administrator(session: Session) -> bool:
    query = sa.select(PersonRole.person_id).where(PersonRole.role == "administrator").limit(1)
    return session.scalar(query) is not None


def person(session: Session, handle: str) -> Person:
    found = session.scalar(sa.select(Person).where(Person.handle == handle))
    if found is None:
        raise UserError(f"no one has the handle {handle!r}: see gpdpr governance people")
    return found


def acting(session: Session, handle: str, role: str, to: str) -> Person:
    """The person acting, who must hold `role` to do what `to` says."""
    actor = person(session, handle)
    if role not in actor.roles:
        raise NotAllowed(
            f"{handle} cannot {to}: that needs the {role.replace('_', ' ')} role, and they have "
            f"{', '.join(sorted(actor.roles)) or 'none'}"
        )
    return actor


def people(session: Session) -> list[Person]:
    return list(session.scalars(sa.select(Person).order_by(Person.handle)))


def organisations(session: Session) -> list[Organisation]:
    return list(session.scalars(sa.select(Organisation).order_by(Organisation.name)))
