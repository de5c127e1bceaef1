"""What the patient's view needs and the public log must never hold: which people each research
run included. Each is kept as a token only the person's own pseudonym can find (see
gpdpr.transparency.patient): nobody reading this table, or the log, can list a run's people or
the runs of a person."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gpdpr.db.models import Base


class RunUse(Base):
    """One person whose record a run read: HMAC-SHA256, under the run's project key, of the run's
    reference and the person's project pseudonym (`gpdpr.transparency.patient.use_token`)."""

    __tablename__ = "tre_run_uses"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("tre_runs.id"), primary_key=True)
    token: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
