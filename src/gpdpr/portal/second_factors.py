"""Staff's second factor: time-based one-time codes (TOTP, RFC 6238, with pyotp), the kind every
authenticator app makes. A secret is kept only once a code made with it has been entered, and
each code is accepted once (the last time step used is stored), within one step either side of
now for a phone's clock drift."""

from __future__ import annotations

import hmac
import os
import time

import pyotp
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.errors import UserError
from gpdpr.governance.models import Person
from gpdpr.portal.models import Credential

ISSUER = "gpdpr portal"
DRIFT_STEPS = 1


def new_secret() -> str:
    return pyotp.random_base32()


def uri(secret: str, handle: str) -> str:
    """The otpauth:// address an authenticator app takes (typed in, or as a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=handle, issuer_name=ISSUER)


def step_of(secret: str, code: str, after: int | None, at: float | None = None) -> int | None:
    """The time step whose code `code` is, if it is one within the drift of now and later than
    `after` (a code already used is refused); None otherwise."""
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if at is None else at
    current = int(now // totp.interval)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        made = totp.at(step * totp.interval)
        if hmac.compare_digest(made, code) and (after is None or step > after):
            return step
    return None


def _credential(session: Session, handle: str) -> Credential | None:
    who = session.scalar(sa.select(Person).where(Person.handle == handle))
    return None if who is None else session.get(Credential, who.id, with_for_update=True)


def enrol(session: Session, handle: str, secret: str, code: str) -> bool:
    """Keep `secret` as the person's second factor if `code` was made with it."""
    found = _credential(session, handle)
    step = step_of(secret, code, None)
    if found is None or step is None:
        return False
    found.totp_secret = secret
    found.totp_last_step = step
    return True


def accept(session: Session, handle: str, code: str) -> bool:
    """Whether `code` is the person's current code, not used before (and mark it used)."""
    found = _credential(session, handle)
    if found is None or found.totp_secret is None:
        return False
    step = step_of(found.totp_secret, code, found.totp_last_step)
    if step is None:
        return False
    found.totp_last_step = step
    return True


REQUIRED_ENV = "GPDPR_SECOND_FACTOR_ROLES"


def required_roles(configured: str | None = None) -> frozenset[str]:
    """The staff roles whose members must have a second factor: `configured` or
    GPDPR_SECOND_FACTOR_ROLES, comma-separated (e.g. "administrator,output_checker"); none when
    unset. A name that is not a staff role is refused, so a typo never leaves a role unguarded."""
    from gpdpr.portal.security import STAFF_ROLES

    text = os.environ.get(REQUIRED_ENV, "") if configured is None else configured
    named = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(named - set(STAFF_ROLES))
    if unknown:
        raise UserError(
            f"{REQUIRED_ENV} names {', '.join(unknown)}, which is not a staff role; the staff "
            f"roles are {', '.join(STAFF_ROLES)}"
        )
    return frozenset(named)


def must_enrol(roles: frozenset[str], enrolled: bool) -> bool:
    """Whether a person with these roles, without a second factor, must set one up before
    anything else."""
    return not enrolled and bool(roles & required_roles())
