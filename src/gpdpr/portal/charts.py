"""Charts drawn on the server as SVG: they show without JavaScript, print, and read out (each has
a title and a description, and its page gives the same figures as a table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

PALETTE = ("#005eb8", "#7c2855", "#007f3b", "#8a4b00")  # each at least 4.5:1 on white
LONGEST = 24  # characters of an axis label shown whole
# The width a chart is drawn at for a phone: text of 11 units stays about 11 px on a 360 px
# screen, where the desktop drawing (640) would shrink it to 6.
NARROW = 340
WIDEST = 56  # units: the widest a bar is drawn


def both(draw: Callable[[int], str]) -> str:
    """A chart drawn twice, for a wide screen and for a phone; the stylesheet shows one (and a
    chart not displayed is not read out either)."""
    return draw(640).replace('class="chart"', 'class="chart wide"', 1) + draw(NARROW).replace(
        'class="chart"', 'class="chart narrow"', 1
    )


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]


def bars(
    title: str,
    labels: list[str],
    series: list[Series],
    width: int = 640,
    height: int = 240,
) -> str:
    """A grouped vertical bar chart: one group per label, one bar per series."""
    left, right, bottom = 48, 12, 48
    top = 16 + 18 * len(series)  # the legend, one line per series, above the plot
    every = max(1, len(labels) // 12)
    room = (width - left - right) / max(1, len(labels)) * every
    # labels too long for their room are turned, never cut short (up to LONGEST characters)
    longest = min(LONGEST, max([0, *(len(label) for label in labels)]))
    turned = longest * 6.5 > room
    if turned:  # room below for the turned text, and on the left for the first label's start
        bottom = 24 + int(longest * 6.5 * 0.6)
        left = max(left, int(longest * 6.5 * 0.82 - room / every / 2) + 4)
    height += top + (bottom - 48)
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max([1, *(v for s in series for v in s.values)])
    scale = max(4, _nice(top_value))
    ticks = 5 if scale % 5 == 0 else 4
    parts = _opened(title, _describe(labels, series), width, height)
    parts += _grid(scale, ticks, (left, top, width - right, plot_h), lambda v: f"{v:,.0f}")
    if labels:
        group = plot_w / len(labels)
        # a bar no wider than WIDEST: one or two bars would otherwise fill the drawing as slabs
        bar = min(WIDEST, max(2.0, group * 0.8 / max(1, len(series))))
        alone = len(labels) == 1  # nothing to compare with: the figure is written on the bar
        for i, label in enumerate(labels):
            x0 = left + group * i + (group - bar * len(series)) / 2
            for j, s in enumerate(series):
                value = s.values[i]
                h = plot_h * value / scale
                parts.append(
                    f'<rect x="{x0 + bar * j:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                    f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                    f"<title>{escape(s.name)}, {escape(label)}: {value:,}</title></rect>"
                )
                if alone:
                    parts.append(
                        f'<text x="{x0 + bar * (j + 0.5):.1f}" y="{top + plot_h - h - 4:.1f}" '
                        f'text-anchor="middle" font-size="12" fill="#212b32">{value:,}</text>'
                    )
            if i % every == 0:
                shown = label if len(label) <= LONGEST else label[: LONGEST - 1] + "…"
                x, y = left + group * (i + 0.5), height - bottom + 16
                turn = f' transform="rotate(-35 {x:.1f} {y})"' if turned else ""
                anchor = "end" if turned else "middle"
                parts.append(
                    f'<text x="{x:.1f}" y="{y}" text-anchor="{anchor}"{turn} font-size="11" '
                    f'fill="#212b32">{escape(shown)}</text>'
                )
    for j, s in enumerate(series):
        y = 6 + 18 * j
        parts.append(
            f'<rect x="{left}" y="{y}" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{left + 18}" y="{y + 10}" font-size="12" fill="#212b32">'
            f"{escape(s.name)}</text>"
        )
    if not labels:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" '
            'fill="#212b32">Nothing yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice(value: int) -> int:
    """A round number at least `value`, for the top of the axis."""
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _id(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())[:40]


def _describe(labels: list[str], series: list[Series]) -> str:
    if not labels:
        return "No figures yet."
    return "; ".join(
        f"{s.name}: "
        + ", ".join(f"{label} {v:,}" for label, v in zip(labels, s.values, strict=True))
        for s in series
    )


@dataclass(frozen=True)
class Rates:
    name: str
    values: list[float | None]  # one per label; None where nothing was published


def lines(title: str, labels: list[str], series: list[Rates], width: int = 640) -> str:
    """A line chart of rates (0 to 1, drawn as percentages), one line per series; a None breaks
    the line, so a redacted interval shows as a gap rather than as zero."""
    left, right, bottom, height = 56, 40, 48, 240  # room for the last label, centred on its point
    top = 16 + 18 * len(series)
    height += top
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([0.0, *(v for s in series for v in s.values if v is not None)]) * 100
    scale = _nice_percent(peak)
    ticks = 4 if scale in (0.2, 2, 20) else 5
    parts = _opened(title, _describe_rates(labels, series), width, height)
    parts += _grid(scale, ticks, (left, top, width - right, plot_h), _percent)
    step_x = plot_w / max(1, len(labels) - 1)
    alone = len(labels) == 1  # one interval: its point in the middle, its figure written by it
    first_x = left + plot_w / 2 if alone else left

    def x_of(i: int) -> float:
        return first_x + step_x * i

    every = max(1, len(labels) // (8 if width > NARROW else 4))
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text x="{x_of(i):.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle" font-size="11" fill="#212b32">{escape(label)}</text>'
            )
    for j, s in enumerate(series):
        colour = PALETTE[j % len(PALETTE)]
        run: list[str] = []
        for i, rate in enumerate([*s.values, None]):
            if rate is not None:
                px, py = x_of(i), top + plot_h - plot_h * rate * 100 / scale
                run.append(f"{px:.1f},{py:.1f}")
                parts.append(
                    f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{5 if alone else 3}" fill="{colour}">'
                    f"<title>{escape(s.name)}, {escape(labels[i])}: {_percent(rate * 100)}"
                    "</title></circle>"
                )
                if alone:
                    parts.append(
                        f'<text x="{px + 9:.1f}" y="{py + 4 - 14 * j:.1f}" font-size="12" '
                        f'fill="{colour}">{_percent(rate * 100)}</text>'
                    )
            elif run:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                    'stroke-width="2"/>'
                )
                run = []
        y = 6 + 18 * j
        parts.append(
            f'<rect x="{left}" y="{y}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{left + 18}" y="{y + 10}" font-size="12" fill="#212b32">'
            f"{escape(s.name)}</text>"
        )
    if not labels:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" '
            'fill="#212b32">Nothing yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_percent(peak: float) -> float:
    """A round top for a percentage axis, at least `peak` (and never above 100 unless needed)."""
    for top in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100):
        if peak <= top:
            return top
    return float(_nice(int(peak) + 1))


def _percent(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + "%"


def _describe_rates(labels: list[str], series: list[Rates]) -> str:
    if not labels:
        return "No figures yet."
    return "; ".join(
        f"{s.name}: "
        + ", ".join(
            f"{label} {'not published' if v is None else _percent(v * 100)}"
            for label, v in zip(labels, s.values, strict=True)
        )
        for s in series
    )


def _opened(title: str, description: str, width: int, height: int) -> list[str]:
    """A chart's opening: the SVG element, labelled by its title and its figures as text."""
    key = f"{_id(title)}-{width}"  # each drawing of a chart has ids of its own
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="t-{key} d-{key}" class="chart">',
        f'<title id="t-{key}">{escape(title)}</title>',
        f'<desc id="d-{key}">{escape(description)}</desc>',
    ]


def _grid(
    scale: float,
    ticks: int,
    plot: tuple[float, float, float, float],
    label: Callable[[float], str],
) -> list[str]:
    """Horizontal grid lines from 0 to `scale` in `ticks` steps, each with its value labelled;
    `plot` is (left, top, right, height) of the plotting area."""
    left, top, right, plot_h = plot
    out = []
    for step in range(ticks + 1):
        value = scale * step / ticks
        y = top + plot_h - plot_h * step / ticks
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d8dde0"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#212b32">{label(value)}</text>'
        )
    return out
