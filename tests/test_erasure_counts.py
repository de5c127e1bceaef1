"""The log's erasure entries cannot single anyone out: one entry per cycle with totals across all
tables, and no count at all for a cycle of fewer than ten people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from governing import act
from gpdpr.db.events import record
from gpdpr.db.models import Event
from gpdpr.transparency import store
from gpdpr.transparency.publish import ERASURE_THRESHOLD, publish


def _erased(gov: sa.Engine, version: int, people: int) -> None:
    for n in range(people):
        details = {
            "pseudonym_hash": f"{version:04d}{n:060d}",
            "tables": {"patients": 1, "clinical_events": 3 + n},
            "rows_removed": 4 + n,
            "lake_version": version,
        }

        def add(s: Session, d: dict[str, Any] = details) -> Event:
            return record(s, "erasure", "gpdpr", d)

        act(gov, add)


def test_a_cycle_is_published_as_totals_and_a_small_one_as_too_few_to_count(
    gov: sa.Engine, tmp_path: Path
) -> None:
    _erased(gov, 7, 1)  # one person: their row count would be theirs alone
    _erased(gov, 8, ERASURE_THRESHOLD)
    publish(tmp_path, gov)
    contents = store.read(tmp_path / "log")
    cycles = [
        contents.entry(s)["details"]
        for s in range(contents.size)
        if contents.entry(s)["type"] == "erasure"
    ]
    rows = sum(4 + n for n in range(ERASURE_THRESHOLD))
    assert cycles == [
        {"lake_version": 7, "people": "fewer than 10"},
        {"lake_version": 8, "people": ERASURE_THRESHOLD, "rows_removed": rows},
    ]
    published = (tmp_path / "log" / store.ENTRIES).read_bytes()
    assert b"pseudonym_hash" not in published and b"0007" + b"0" * 20 not in published
    assert b"clinical_events" not in published  # no count per table
