"""The log pages in words: a release's file names keep their underscores, and the first
specification entry is its publication, not a change."""

from __future__ import annotations

from array import array

from gpdpr.portal.log import LogState, entry_title, readable


def test_file_names_in_a_detail_keep_their_underscores_and_other_keys_read_as_words() -> None:
    shown = readable({"table_adults_by_sex.csv": 2, "rows_removed": 5, "clinical_events": 3})
    assert "table_adults_by_sex.csv 2" in shown
    assert "rows removed 5" in shown and "clinical events 3" in shown


def test_the_first_specification_entry_is_its_publication_and_later_ones_changes() -> None:
    state = LogState(None, None, {"spec.version": array("q", [0, 7])})
    assert entry_title(state, "spec.version", 0) == "Specification published"
    assert entry_title(state, "spec.version", 7) == "Specification changed"


def test_an_erasure_entry_says_why_people_can_outnumber_rows() -> None:
    from gpdpr.portal.log import details_of

    shown = details_of(
        {"type": "erasure", "details": {"people": 1249, "rows_removed": 195, "lake_version": 3}}
    )
    text = {d.label: d.text for d in shown}
    assert text["People"] == "1,249" and text["Rows removed"] == "195"
    assert "never reached the centre" in text["What the figures mean"]
    other = details_of({"type": "release.published", "details": {"title": "x"}})
    assert all(d.label != "What the figures mean" for d in other)
