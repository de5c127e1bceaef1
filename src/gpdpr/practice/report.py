"""What one extract did, drawn for the practice: what left, what stayed behind and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpdpr.practice.extract import quarantine_path

BAR = 40


def _bar(n: int, biggest: int) -> str:
    return "█" * max(1 if n else 0, round(BAR * n / biggest)) if biggest else ""


def render(manifest: dict[str, Any], out: Path, console: Console) -> None:
    window = manifest["window"]
    since = window["since"] or "the start of the record"
    console.print(
        f"[bold]{manifest['kind'].capitalize()} extract[/] of {manifest['practice']['ods_code']} "
        f"({manifest['source_format']}), records changed from {since} to {window['until']}, "
        f"specification {manifest['specification']['version']}"
    )
    sent = {name: t["rows"] for name, t in manifest["tables"].items()}
    kept_back = {reason: n for reason, n in manifest["excluded"].items()}
    quarantined = manifest["quarantined"]["rows"]
    rows = [("sent: " + name, n, "green") for name, n in sent.items()]
    rows += [
        ("left out: " + reason.replace("_", " "), n, "yellow") for reason, n in kept_back.items()
    ]
    if quarantined:
        rows.append(("quarantined (see file)", quarantined, "red"))
    biggest = max((n for _, n, _ in rows), default=0)
    table = Table(title="What happened to each record", show_edge=False)
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_column("")
    for label, n, colour in rows:
        table.add_row(label, f"{n:,}", f"[{colour}]{_bar(n, biggest)}[/]")
    console.print(table)
    type1 = manifest["type1_opt_out"]
    console.print(
        f"Type 1 opt-outs: {len(type1['active'])} patients send nothing (their codes are in the "
        f"manifest so the centre erases them); {len(type1['withdrawn'])} have withdrawn theirs."
    )
    if manifest["deletions"]["rows"]:
        console.print(f"{manifest['deletions']['rows']:,} earlier records to be removed centrally.")
    for name, count in manifest["not_read"].items():
        console.print(f"Not read (never collected): {name}, {count:,} items.")
    console.print(f"Package [bold]{out}[/], signed; quarantine file {quarantine_path(out)}.")
