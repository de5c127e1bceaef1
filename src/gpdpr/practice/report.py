"""What one extract did, drawn for the practice: what left, what stayed behind and why."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpdpr.practice.extract import quarantine_path

BAR = 30


def _bar(n: int, biggest: int) -> str:
    return "█" * max(1 if n else 0, round(BAR * n / biggest)) if biggest else ""


def _outcomes(
    sent: dict[str, int], left_out: dict[str, int], quarantined: int, console: Console
) -> None:
    """A bar for each table sent and each reason a record stayed behind."""
    rows = [("sent: " + name, n, "green") for name, n in sent.items()]
    rows += [("left out: " + _reason(r), n, "yellow") for r, n in sorted(left_out.items())]
    if quarantined:
        rows.append(("quarantined (see file)", quarantined, "red"))
    biggest = max((n for _, n, _ in rows), default=0)
    table = Table(title="What happened to each record", show_edge=False)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=BAR)
    table.add_column("")
    for label, n, colour in rows:
        table.add_row(f"{n:,}", f"[{colour}]{_bar(n, biggest)}[/]", label)
    console.print(table)


def _reason(key: str) -> str:
    """'sensitive_code:termination_of_pregnancy' -> 'sensitive code: termination of pregnancy'"""
    return key.replace("_", " ").replace(":", ": ")


def render(manifest: dict[str, Any], out: Path, console: Console) -> None:
    window = manifest["window"]
    since = window["since"] or "the start of the record"
    console.print(
        f"[bold]{manifest['kind'].capitalize()} extract[/] of {manifest['practice']['ods_code']} "
        f"({manifest['source_format']}), records changed from {since} to {window['until']}, "
        f"specification {manifest['specification']['version']}"
    )
    sent = {name: t["rows"] for name, t in manifest["tables"].items()}
    _outcomes(sent, manifest["excluded"], manifest["quarantined"]["rows"], console)
    type1 = manifest["type1_opt_out"]
    console.print(
        f"Type 1 opt-outs: {len(type1['active'])} patients send nothing (their codes are in the "
        f"manifest so the centre erases them); {len(type1['withdrawn'])} have withdrawn theirs."
    )
    if manifest["deletions"]["rows"]:
        console.print(f"{manifest['deletions']['rows']:,} earlier records to be removed centrally.")
    for name, count in manifest["not_read"].items():
        console.print(f"Not read (never collected): {name}, {count:,} items.")
    for name, count in manifest["replaced_outside_allowlist"].items():
        # Text outside its field's vocabulary or shape, a number, date or time outside its range.
        console.print(f"Outside what its field allows, sent as other or null: {name}, {count:,}.")
    console.print(f"Package [bold]{out}[/], signed; quarantine file {quarantine_path(out)}.")


def render_many(manifests: dict[str, dict[str, Any]], packages: Path, console: Console) -> None:
    """Every practice's extract in one view: totals drawn, then a line a practice."""
    sent: Counter[str] = Counter()
    left_out: Counter[str] = Counter()
    quarantined = 0
    per_practice = Table(title="Packages", show_edge=False)
    for column in ("practice", "patients sent", "records sent", "Type 1", "quarantined"):
        per_practice.add_column(column, justify="left" if column == "practice" else "right")
    for ods, manifest in manifests.items():
        rows = {name: t["rows"] for name, t in manifest["tables"].items()}
        sent.update(rows)
        left_out.update(manifest["excluded"])
        quarantined += manifest["quarantined"]["rows"]
        records = sum(n for name, n in rows.items() if name not in ("patients", "staff"))
        per_practice.add_row(
            ods,
            f"{rows['patients']:,}",
            f"{records:,}",
            f"{len(manifest['type1_opt_out']['active']):,}",
            f"{manifest['quarantined']['rows']:,}",
        )
    _outcomes(dict(sent), dict(left_out), quarantined, console)
    console.print(per_practice)
    console.print(
        f"{len(manifests)} signed packages in [bold]{packages}[/], each with its manifest "
        "(specification version and hash, counts, checksums, Type 1 codes) and, beside it, "
        "its quarantine file."
    )
