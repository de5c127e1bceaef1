"""Where one columnar extract's time goes: the OPRF's three steps, the record ids, the rules, the
Parquet reading and writing, the seal. For choosing what to make faster, and for the floor.

    .venv/bin/python bench/extract_stages.py                  # one practice of 10,000 patients
    .venv/bin/python bench/extract_stages.py --patients 16000

One practice is synthesised (`gpdpr synth`, seed 1, columnar) and given a kit; the custodian's
service runs in this process, as in extract_bench.py. One extract warms the imports and the
terminology up; a second, of the same practice, is timed stage by stage. Each stage is timed
with this process's CPU clock (every thread, the service's included, since the service works
only while the extract waits for it) and the wall clock; "rest" is what no stage named holds
(reading Parquet row groups happens inside the rules' loop and is in "rules and reading").
The per-row and per-patient figures are over the practice's source rows and patients, so that
the floor can be read off: on 2 cores, 2 M rows/s leaves 1 us of CPU per row for everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Clock = dict[str, list[float]]

# (module, attribute, stage): each wrapped in turn; a stage inside another is subtracted from it.
STAGES = [
    ("gpdpr.practice.oprf", "new_blinds", "OPRF: new blinds (practice)"),
    ("gpdpr.practice.oprf", "blind", "OPRF: hash to group and blind (practice)"),
    ("httpx", "post", "OPRF: round trip, the service's evaluation (custodian)"),
    ("gpdpr.practice.oprf", "finalize", "OPRF: unblind and hash (practice)"),
    ("gpdpr.practice.pseudonyms:Pseudonymiser", "records", "record ids (HMAC-SHA256)"),
    ("gpdpr.practice.rules:Rules", "records", "rules and reading, record tables"),
    ("gpdpr.practice.rules:Rules", "patients", "rules, patients"),
    ("gpdpr.practice.package:TableWriter", "write", "Parquet writing"),
    ("gpdpr.practice.extract", "seal", "seal (hash and sign)"),
]
INSIDE = {  # stage -> the stages timed within it
    "rules and reading, record tables": ["record ids (HMAC-SHA256)"],
}


def _target(where: str) -> Any:
    import importlib

    module, _, cls = where.partition(":")
    found = importlib.import_module(module)
    return getattr(found, cls) if cls else found


@contextmanager
def _timed(clock: Clock) -> Iterator[None]:
    saved = []
    for where, name, stage in STAGES:
        owner = _target(where)
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def wrapper(
            *args: Any, _f: Callable[..., Any] = original, _s: str = stage, **kw: Any
        ) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _f(*args, **kw)
            finally:
                spent = clock.setdefault(_s, [0.0, 0.0])
                spent[0] += time.perf_counter() - wall
                spent[1] += time.process_time() - cpu

        setattr(owner, name, functools.wraps(original)(wrapper))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    patients = parser.parse_args().patients

    from gpdpr.custodian.keys import init, issue_practice
    from gpdpr.custodian.service import running
    from gpdpr.practice.extract import ExtractRequest, extract
    from gpdpr.synth.run import SynthRequest, synthesise

    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="gpdpr-stages-") as tmp:
        root = Path(tmp)
        summary, _ = synthesise(SynthRequest(root / "nation", 1, patients, 1, "columnar"))
        code = summary.practices[0].ods_code
        folder = root / "nation" / code
        about = json.loads((folder / "extract.json").read_text())
        rows = sum(t["rows"] for t in about["tables"].values())
        init(root / "keys")
        kit = issue_practice(root / "keys", code)
        clock: Clock = {}
        with running(root / "keys") as url:
            extract(ExtractRequest(folder, root / "warm", kit, custodian=url))
            wall, cpu = time.perf_counter(), time.process_time()
            with _timed(clock):
                manifest = extract(ExtractRequest(folder, root / "timed", kit, custodian=url))
            total = [time.perf_counter() - wall, time.process_time() - cpu]
    evaluations = manifest["pseudonymisation"]["evaluations"]

    for outer, inner in INSIDE.items():
        for stage in inner:
            for i in (0, 1):
                clock[outer][i] -= clock.get(stage, [0.0, 0.0])[i]
    named = [sum(c[i] for c in clock.values()) for i in (0, 1)]
    clock["rest (reading patients, checks, staging, manifest)"] = [
        total[i] - named[i] for i in (0, 1)
    ]

    table = Table(
        title=f"one columnar extract: {patients:,} patients, {rows:,} source rows, "
        f"{evaluations:,} OPRF evaluations in one round trip",
        header_style="bold",
    )
    for column in ["stage", "seconds", "CPU s", "CPU us/row", "CPU us/patient", "share of CPU"]:
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, (w, c) in [*clock.items(), ("TOTAL", total)]:
        table.add_row(
            stage,
            f"{w:.2f}",
            f"{c:.2f}",
            f"{c / rows * 1e6:.2f}",
            f"{c / patients * 1e6:,.0f}",
            f"{c / total[1]:.0%}",
        )
    console.print(table)
    oprf = sum(c for s, (_, c) in clock.items() if s.startswith("OPRF"))
    console.print(
        f"OPRF: {oprf / evaluations * 1e6:,.0f} us of CPU per evaluation, "
        f"{oprf / rows * 1e6:.2f} us per source row at {rows / patients:.0f} rows per patient; "
        f"all stages: {total[1] / rows * 1e6:.2f} us per row, so at most "
        f"{2 * rows / total[1]:,.0f} rows/s on 2 busy cores."
    )


if __name__ == "__main__":
    main()
