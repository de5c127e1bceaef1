"""Benchmark `gpdpr synth`: patients/s, records/s, seconds and peak memory at several scales.

    .venv/bin/python bench/synth_bench.py                 # columnar 10k/100k/1M, FHIR 10k/100k
    .venv/bin/python bench/synth_bench.py --only fhir:10000

Each run happens in a fresh process, so peak memory is that run's own: the main process (which
holds the nation) and the largest worker process (one practice block at a time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runs import chosen_runs

DEFAULT_RUNS = [
    ("columnar", 10_000),
    ("columnar", 100_000),
    ("columnar", 1_000_000),
    ("fhir", 10_000),
    ("fhir", 100_000),
]
LIST_SIZE = 9_000  # England's typical list size: practices = patients / 9,000

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from gpdpr.synth.run import SynthRequest, synthesise
fmt, patients, practices, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
started = time.perf_counter()
summary, _ = synthesise(SynthRequest(out, practices, patients, 1, fmt))
seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": seconds,
    "rows": sum(summary.total_rows().values()),
    "resources": sum(summary.total_resources().values()),
    "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
}))
"""


def run_one(fmt: str, patients: int) -> dict[str, float]:
    practices = max(2, round(patients / LIST_SIZE))
    with tempfile.TemporaryDirectory(prefix="gpdpr-bench-") as tmp:
        out = Path(tmp) / "nation"
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, fmt, str(patients), str(practices), str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    figures["practices"] = practices
    return figures


def main() -> None:
    runs = chosen_runs(__doc__ or "", ("columnar", "fhir"), DEFAULT_RUNS)

    console = Console(width=150)
    table = Table(title=f"gpdpr synth on {os.cpu_count()} cores", header_style="bold")
    for column in [
        "format",
        "patients",
        "practices",
        "seconds",
        "patients/s",
        "records/s",
        "MB written",
        "peak MB main",
        "peak MB worker",
    ]:
        table.add_column(column, justify="left" if column == "format" else "right")
    for fmt, patients in runs:
        with console.status(f"{fmt} {patients:,} patients"):
            f = run_one(fmt, patients)
        records = f["resources"] if fmt == "fhir" else f["rows"]
        table.add_row(
            fmt,
            f"{patients:,}",
            f"{f['practices']:,.0f}",
            f"{f['seconds']:.1f}",
            f"{patients / f['seconds']:,.0f}",
            f"{records / f['seconds']:,.0f}",
            f"{f['bytes'] / 1e6:,.0f}",
            f"{f['main_mb']:,.0f}",
            f"{f['worker_mb']:,.0f}",
        )
        console.print(f"done: {fmt} {patients:,} in {f['seconds']:.1f}s")
    console.print(table)


if __name__ == "__main__":
    main()
