"""The centre's resend list, as a practice reads it: a bad list is refused with the reason, never
half-used."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from databases import pseudonym, sqlite_engine
from gpdpr.errors import UserError
from gpdpr.optout.registry import Registry
from gpdpr.practice.resend import read_resend_list, write_resend_list


def test_a_list_written_by_the_centre_reads_back(tmp_path: Path) -> None:
    people = {pseudonym(1), pseudonym(2)}
    write_resend_list(tmp_path / "list.json", people, since=None)
    assert read_resend_list(tmp_path / "list.json") == people
    with pytest.raises(UserError, match="already exists"):
        write_resend_list(tmp_path / "list.json", people, since=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"kind": "something else", "pseudonyms": []}', "is not a resend list"),
        (b'{"kind": "gpdpr resend list", "pseudonyms": "abc"}', "must be a list"),
        (
            b'{"kind": "gpdpr resend list", "pseudonyms": ["9990000018"]}',
            "pseudonym number 1 is not 64 lower-case hex digits",
        ),
    ],
)
def test_a_malformed_list_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "list.json").write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_resend_list(tmp_path / "list.json")


def test_a_missing_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no resend list at"):
        read_resend_list(tmp_path / "absent.json")


def test_the_list_holds_withdrawals_after_the_time_asked_and_not_current_opt_outs(
    tmp_path: Path,
) -> None:
    registry = Registry(sqlite_engine(tmp_path))
    early, late, still_out = pseudonym("early"), pseudonym("late"), pseudonym("out")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    for person in (early, late, still_out):
        registry.set(person, "type1", "online", at=at)
    registry.withdraw(early, "type1", "online", at=datetime(2026, 11, 2, tzinfo=UTC))
    registry.withdraw(late, "type1", "online", at=datetime(2026, 11, 10, tzinfo=UTC))
    assert registry.restored_type1() == {early, late}
    assert registry.restored_type1(datetime(2026, 11, 5, tzinfo=UTC)) == {late}
