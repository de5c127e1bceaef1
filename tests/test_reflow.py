"""Charts that fit a phone: drawn a second time, narrow, for a phone's width, with every label
whole (turned when it is too long for its room) and inside the drawing. The pages themselves are
checked at phone width in a real browser by test_portal_browser.py."""

from __future__ import annotations

import math
import re

from gpdpr.portal.charts import NARROW, Rates, Series, bars, both, lines

REGIONS = ["North East", "East Midlands", "Yorkshire and The Humber", "South West", "London"]


def test_a_label_too_long_for_its_room_is_turned_whole_and_starts_inside_the_drawing() -> None:
    svg = bars("By region", REGIONS, [Series("Patients", [5, 9, 3, 7, 1])], width=NARROW)
    labels = re.findall(
        r'<text x="([\d.]+)" y="(\d+)" text-anchor="end" transform="rotate\(-35 '
        r'[^"]+\)" font-size="11" fill="#212b32">([^<]+)</text>',
        svg,
    )
    assert [name for _, _, name in labels] == REGIONS  # every one, none cut short
    for x, _, name in labels:  # the turned text's start, 6.5 units a character, on the drawing
        assert float(x) - len(name) * 6.5 * math.cos(math.radians(35)) >= 0, name
    height = float(re.search(r'viewBox="0 0 \d+ ([\d.]+)"', svg).group(1))  # type: ignore[union-attr]
    assert all(int(y) + len(n) * 6.5 * math.sin(math.radians(35)) <= height for _, y, n in labels)


def test_labels_that_fit_stay_level() -> None:
    svg = bars("Two", ["South East", "South West"], [Series("Patients", [5, 9])], width=640)
    assert "rotate(" not in svg and ">South East<" in svg and ">South West<" in svg


def test_a_chart_drawn_twice_has_ids_of_its_own_in_each_drawing() -> None:
    drawn = both(
        lambda width: lines("Rate", ["2024-01", "2024-02"], [Rates("all", [0.1, 0.2])], width=width)
    )
    assert drawn.count("<svg") == 2
    assert 'class="chart wide"' in drawn and 'class="chart narrow"' in drawn
    ids = re.findall(r' id="([^"]+)"', drawn)
    assert len(ids) == 4 and len(set(ids)) == 4
    for labelled in re.findall(r'aria-labelledby="([^"]+)"', drawn):
        assert set(labelled.split()) <= set(ids)
