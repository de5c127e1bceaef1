"""The portal's tables: the password (argon2 hash) and second factor of each person who signs in
with one (applicants, panel members, output checkers, administrators), the server-side sessions,
and the sign-in attempt counters. Patients never have a password here: they sign in through the
identity provider (NHS login, or its stand-in), so the portal holds no patient's secret and no
NHS number.

Sessions and counters are in the central database, not a process's memory, so a restarted portal
keeps its sessions and every portal worker shares them and the limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gpdpr.db.models import Base


class Credential(Base):
    __tablename__ = "portal_credentials"

    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    changed_at: Mapped[datetime]
    # The base32 TOTP secret once the person has enrolled a second factor (None: not yet).
    totp_secret: Mapped[str | None] = mapped_column(sa.String(64))
    # The last time step whose code was accepted: a code is used once.
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)


class SessionRow(Base):
    """One server-side session. `key` is the SHA-256 of the cookie's value, so the table's
    contents alone do not let anyone take a session over."""

    __tablename__ = "portal_sessions"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    csrf: Mapped[str] = mapped_column(sa.String(64))
    created: Mapped[float] = mapped_column(sa.Float)
    seen: Mapped[float] = mapped_column(sa.Float, index=True)
    handle: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    roles: Mapped[list[Any]] = mapped_column(sa.JSON)
    pseudonym: Mapped[str | None] = mapped_column(sa.String(64))
    pending: Mapped[dict[str, Any]]
    flash: Mapped[list[Any]] = mapped_column(sa.JSON)


class SignInCounter(Base):
    """Sign-in attempts against one key (an account, a client address) since `since`: counted
    before the password is checked, so attempts made at the same moment are counted in turn."""

    __tablename__ = "portal_sign_in_counters"

    key: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    since: Mapped[float] = mapped_column(sa.Float)
    count: Mapped[int]
