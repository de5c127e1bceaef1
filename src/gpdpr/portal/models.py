"""The portal's one table: the people who sign in with a password (applicants, panel members,
output checkers, administrators) and the argon2 hash of it. Patients never have one here: they
sign in through the identity provider (NHS login, or its stand-in), so the portal holds no
patient's secret and no NHS number.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gpdpr.db.models import Base


class Credential(Base):
    __tablename__ = "portal_credentials"

    person_id: Mapped[int] = mapped_column(sa.ForeignKey("people.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    changed_at: Mapped[datetime]
