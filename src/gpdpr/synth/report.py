"""What a synthetic nation holds, for people to look at: counts, an age pyramid, and recorded
prevalence against the published figures the generator was asked to match.

Figures come from the nation in memory (the generator's own truth), so the report is the same for
either output format; the tests check the written files against the same targets independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpdpr.synth.nation import NO_DATE, YEAR, Nation
from gpdpr.synth.run import SynthSummary

BAR = "█"


@dataclass(frozen=True)
class PrevalenceRow:
    condition: str
    base: str
    published: float
    synthetic: float


def registered_today(nation: Nation) -> np.ndarray:
    """People holding an open registration on the extract date."""
    regs = nation.registrations
    people = np.zeros(len(nation.people), dtype=bool)
    people[regs.person[regs.end == NO_DATE]] = True
    return people


def prevalence(nation: Nation) -> list[PrevalenceRow]:
    people = nation.people
    today = registered_today(nation)
    age = (nation.config.as_of_day - people.birth) / YEAR
    rows = []
    for condition in nation.params.conditions:
        base = today & (age >= condition.base_min_age)
        has = people.onset[condition.name] <= nation.config.as_of_day
        share = float(has[base].mean()) if base.any() else 0.0
        label = "all ages" if condition.base_min_age == 0 else f"aged {condition.base_min_age}+"
        rows.append(PrevalenceRow(condition.name, label, condition.prevalence, share))
    return rows


def age_pyramid(nation: Nation, band: int = 10) -> list[tuple[str, int, int]]:
    """(band label, females, males) among people registered on the extract date."""
    people = nation.people
    today = registered_today(nation)
    age = ((nation.config.as_of_day - people.birth) / YEAR).astype(int)
    out = []
    for start in range(0, 100, band):
        in_band = today & (age >= start) & (age < start + band)
        label = f"{start}-{start + band - 1}" if start < 90 else "90+"
        if start >= 90:
            in_band = today & (age >= start)
        out.append(
            (
                label,
                int((in_band & (people.sex == 0)).sum()),
                int((in_band & (people.sex == 1)).sum()),
            )
        )
    return out


def _bar(value: float, top: float, width: int) -> str:
    return BAR * max(0, round(width * value / top)) if top else ""


def render(summary: SynthSummary, nation: Nation, console: Console) -> None:
    rows = summary.total_rows()
    made = Table(title="What was made", show_header=True, header_style="bold")
    made.add_column("table")
    made.add_column("rows", justify="right")
    for table, n in rows.items():
        made.add_row(table, f"{n:,}")
    made.add_row("[bold]all", f"[bold]{sum(rows.values()):,}")
    if summary.total_resources():
        made.add_row("", "")
        for kind, n in summary.total_resources().items():
            made.add_row(f"FHIR {kind}", f"{n:,}")

    pyramid = age_pyramid(nation)
    top = max(max(f, m) for _, f, m in pyramid) or 1
    lines = Text()
    lines.append(f"{'females':>22}   age   males\n", style="bold")
    for label, f, m in reversed(pyramid):
        lines.append(f"{_bar(f, top, 20):>20}", style="magenta")
        lines.append(f"  {label:^7} ")
        lines.append(f"{_bar(m, top, 20)}\n", style="cyan")

    prev = Table(title="Recorded prevalence (registered today) vs published", header_style="bold")
    for col in ("condition", "base", "published", "synthetic", ""):
        prev.add_column(col, justify="right" if col in ("published", "synthetic") else "left")
    top_share = max(max(r.published, r.synthetic) for r in prevalence(nation))
    for r in prevalence(nation):
        prev.add_row(
            r.condition,
            r.base,
            f"{r.published:.1%}",
            f"{r.synthetic:.1%}",
            Text(_bar(r.synthetic, top_share, 16), style="green", no_wrap=True),
        )

    faults = summary.total_faults()
    fault_text = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in faults.items()) or "none"
    rate = sum(rows.values()) / summary.seconds if summary.seconds else 0
    header = (
        f"[bold]{len(summary.practices):,}[/] practices, [bold]{summary.patients:,}[/] patient "
        f"records of [bold]{summary.people:,}[/] people (some moved practice), written as "
        f"[bold]{summary.request['format']}[/] to {summary.request['out']}\n"
        f"{sum(rows.values()):,} rows in {summary.seconds:.1f}s ({rate:,.0f} rows/s, "
        f"{summary.patients / summary.seconds:,.0f} patients/s)\n"
        f"planted data-quality faults: {fault_text}"
    )
    console.print(
        Panel(
            Group(header, made, Panel(lines, title="Age and sex, registered today"), prev),
            title="gpdpr synth",
            expand=False,
        )
    )
