"""A patient's timeline with hundreds of events: a year of daily packages from two practices,
opt-out changes and project runs. Packages are summed into one moment per practice and month
with nothing left uncounted, and the moments are paged newest first, each exactly once. (The
timeline over a real service home, before and after an erasure, is in test_portal_message.)"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from gpdpr.portal.timeline import PAGE, Moment, Sent, Timeline, moments_of, page_of
from gpdpr.transparency.patient import ProjectUse, RecordUses, RunSeen

START = datetime(2025, 1, 1, 6, tzinfo=UTC)


def busy_patient() -> Timeline:
    """365 daily packages from one practice and 12 monthly ones from another (the person moved
    practice mid-year and the first kept sending), 120 opt-out changes, 80 runs."""
    sent = [
        Sent("Z10001", f"pkg-a-{d:03d}", "incremental", START + timedelta(days=d), 2)
        for d in range(365)
    ]
    sent += [
        Sent(
            "Z10002",
            f"pkg-b-{m:02d}",
            "historic" if m == 0 else "incremental",
            datetime(2025, m + 1, 15, tzinfo=UTC),
            5,
        )
        for m in range(12)
    ]
    sent.sort(key=lambda s: s.extracted_at)
    history = [
        {
            "action": "set" if n % 2 == 0 else "withdrawn",
            "source": "online",
            "effective_at": START + timedelta(days=3 * n, hours=1),
        }
        for n in range(120)
    ]
    runs = [
        RunSeen(f"RUN-{n:06d}", date(2025, 1, 1) + timedelta(days=4 * n), 7, "ab" * 32)
        for n in range(80)
    ]
    project = ProjectUse(
        "DSA-1",
        "APP-1",
        "Falls",
        ["Leeds"],
        "Research",
        "2025-01-01",
        "2026-01-01",
        "active",
        runs,
        {},
    )
    uses = RecordUses([project], {"type1": {"state": "not set", "history": history}})
    return Timeline(sent, [], uses)


def entries_in(detail: str) -> int:
    """The number of entries a collected moment says it counts."""
    found = re.search(r"([\d,]+) entr(?:y|ies) about you", detail)
    assert found is not None, detail
    return int(found.group(1).replace(",", ""))


def test_a_year_of_daily_packages_is_one_moment_a_practice_a_month_with_every_entry_counted() -> (
    None
):
    made = busy_patient()
    moments = moments_of(made, {"ab" * 32: "how many fell"})
    collected = [m for m in moments if m.kind == "collected"]
    assert len(collected) == 12 + 12  # each practice, each month
    counted = sum(entries_in(m.detail) for m in collected)
    assert counted == sum(s.rows for s in made.sent) == 365 * 2 + 12 * 5
    january = [
        m for m in collected if m.title.endswith("Z10001 sent data about you") and m.at.month == 1
    ]
    assert (
        len(january) == 1
        and "In 31 incremental extracts from 01 January to 31 January 2025" in january[0].detail
    )
    assert january[0].at == START + timedelta(days=30)  # dated by the month's last package
    assert sum(m.kind == "opt-out" for m in moments) == 120
    assert sum(m.kind == "used" for m in moments) == 80
    assert all("how many fell" in m.detail for m in moments if m.kind == "used")
    assert [m.at for m in moments] == sorted((m.at for m in moments), reverse=True)


def test_pages_hold_every_moment_once_newest_first_and_a_page_past_the_end_is_the_last() -> None:
    moments = moments_of(busy_patient(), {})
    total = len(moments)
    assert total == 24 + 120 + 80
    pages = -(-total // PAGE)
    seen: list[Moment] = []
    for number in range(1, pages + 1):
        page = page_of(moments, number)
        assert (page.number, page.pages, page.total) == (number, pages, total)
        assert page.first == len(seen) + 1
        assert len(page.moments) == (PAGE if number < pages else total - PAGE * (pages - 1))
        seen += page.moments
    assert seen == moments  # each once, in order
    assert page_of(moments, 10**9).number == pages and page_of(moments, -3).number == 1
    assert page_of([], 1).moments == [] and page_of([], 1).pages == 1
