"""Charts with one bar or one point: drawn as a mark of ordinary size in the middle of the plot
with its figure written beside it (not a slab across the drawing, nor a dot on the axis with its
label half outside), at both the wide and the phone width, and read out with the figure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gpdpr.portal.charts import NARROW, WIDEST, Rates, Series, bars, lines

SVG = "{http://www.w3.org/2000/svg}"


def parsed(svg: str) -> tuple[ET.Element, float, float]:
    root = ET.fromstring(svg)
    _, _, width, height = (float(v) for v in root.attrib["viewBox"].split())
    return root, width, height


def texts(root: ET.Element) -> dict[str, ET.Element]:
    return {t.text or "": t for t in root.iter(f"{SVG}text")}


def plot_edges(root: ET.Element) -> tuple[float, float]:
    """The plot's left and right, from its grid lines."""
    line = next(root.iter(f"{SVG}line"))
    return float(line.attrib["x1"]), float(line.attrib["x2"])


def written_in_plot(root: ET.Element) -> list[str]:
    """The text drawn inside the plot, right of the axis (the axis's own figures are left of
    it, and the legend and the labels under it are above and below)."""
    left, _ = plot_edges(root)
    lines = list(root.iter(f"{SVG}line"))
    top, bottom = (float(lines[i].attrib["y1"]) for i in (-1, 0))
    return [
        t.text or ""
        for t in root.iter(f"{SVG}text")
        if float(t.attrib["x"]) > left and top - 16 < float(t.attrib["y"]) < bottom
    ]


@pytest.mark.parametrize("width", [640, NARROW])
def test_one_bar_is_a_bar_of_ordinary_width_in_the_middle_with_its_figure(width: int) -> None:
    root, drawn_width, height = parsed(
        bars("Applications", ["Approved"], [Series("Applications", [1234])], width=width)
    )
    [bar] = list(root.iter(f"{SVG}rect"))[:1]
    x, w = float(bar.attrib["x"]), float(bar.attrib["width"])
    left, right = plot_edges(root)
    assert w <= WIDEST < (right - left) / 4  # a bar, not the plot filled
    assert abs((x + w / 2) - (left + right) / 2) < 1  # centred over its label
    assert written_in_plot(root) == ["1,234"]
    shown = texts(root)
    figure = shown["1,234"]  # the figure itself, written on the drawing
    assert abs(float(figure.attrib["x"]) - (x + w / 2)) < 1
    assert float(figure.attrib["y"]) < float(bar.attrib["y"])  # above the bar, not hidden in it
    label = shown["Approved"]
    assert 0 <= float(label.attrib["x"]) <= drawn_width and float(label.attrib["y"]) <= height
    desc = root.find(f"{SVG}desc")
    assert desc is not None and desc.text == "Applications: Approved 1,234"


def test_one_label_with_two_series_draws_two_bars_side_by_side_each_with_its_figure() -> None:
    root, _, _ = parsed(
        bars("Opt-outs", ["2026-12"], [Series("Set", [7]), Series("Withdrawn", [2])], width=640)
    )
    rects = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(rects) == 2
    first, second = (float(r.attrib["x"]) for r in rects)
    assert second - first == pytest.approx(float(rects[0].attrib["width"]))
    assert sorted(written_in_plot(root)) == ["2", "7"]


def test_many_bars_keep_their_figures_in_the_table_and_tooltips_not_on_the_drawing() -> None:
    root, _, _ = parsed(bars("Months", ["a", "b", "c"], [Series("n", [3, 5, 4])], width=640))
    assert written_in_plot(root) == []  # figures on the axis only, not per bar


@pytest.mark.parametrize("width", [640, NARROW])
def test_one_point_is_in_the_middle_with_its_label_under_it_and_its_rate_beside_it(
    width: int,
) -> None:
    root, drawn_width, _ = parsed(
        lines("Rate", ["2026-01"], [Rates("All patients", [0.125])], width=width)
    )
    [point] = list(root.iter(f"{SVG}circle"))
    cx = float(point.attrib["cx"])
    left, right = plot_edges(root)
    assert abs(cx - (left + right) / 2) < 1
    shown = texts(root)
    assert abs(float(shown["2026-01"].attrib["x"]) - cx) < 1  # the label under its point
    rate = shown["12.5%"]
    assert cx < float(rate.attrib["x"]) < drawn_width - 30  # beside the point, on the drawing
    desc = root.find(f"{SVG}desc")
    assert desc is not None and desc.text == "All patients: 2026-01 12.5%"


def test_a_line_of_several_points_starts_at_the_axis_and_writes_no_figures() -> None:
    root, _, _ = parsed(lines("Rate", ["a", "b", "c"], [Rates("r", [0.1, 0.2, None])], width=640))
    left, _ = plot_edges(root)
    cxs = [float(c.attrib["cx"]) for c in root.iter(f"{SVG}circle")]
    assert cxs[0] == pytest.approx(left) and len(cxs) == 2
    in_plot = [t for t, e in texts(root).items() if t.endswith("%") and float(e.attrib["x"]) > left]
    assert in_plot == []  # the percentages are the axis's, left of the plot
