"""Benchmark `gpdpr practice extract`: source rows (or FHIR resources) per second, and peak memory.

    .venv/bin/python bench/extract_bench.py
    .venv/bin/python bench/extract_bench.py --only columnar:100000 fhir-one:10000

Runs (KIND:PATIENTS):

  columnar   supplier Parquet extracts, England-like list sizes (practices = patients // 9,000),
             extracted on 2 cores: a pool of 2 worker processes, one practice per task.
  fhir       FHIR NDJSON exports, the same list sizes, extracted on 1 core: one worker process
             extracting the practices one after another, so the rate is per core.
  fhir-one   FHIR NDJSON, ONE practice holding every patient, on 1 core: compare the peak memory
             of a 100,000-patient practice with a 10,000-patient one.
  fhir-bundle  ONE practice holding every patient, its resources all in ONE Bundle file
             (`everything.json`, hundreds of MB), on 1 core: the Bundle is streamed an entry at a
             time, so its peak memory should be that of fhir-one, not grow with the file.

Each run has two fresh child processes. The first synthesises the practices (`gpdpr synth`, seed 1)
into a temporary folder and issues each practice a key kit; none of that is timed. The second
starts the custodian's pseudonym service (a real HTTP server, in that process, on the same cores)
and the worker pool, has every worker import the extractor, then times from the first practice
handed out (largest first) to the last package sealed: each extract's one round trip to the
service included. Every extract is a historic one with nothing cached: every pseudonym is
evaluated by the service in that extract's round trip.
Source rows are the supplier tables' row counts in each extract.json; FHIR resources are the
non-empty lines of the *.ndjson files (for fhir-bundle, the Bundle's entries). Peak MB is the
largest ru_maxrss of any worker, each worker reporting its own after every practice; cores used
is the workers' CPU seconds inside extract() over the wall-clock seconds (the service's own work
is not in it). The source files were written
just before, so they are read from the page cache, not the disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from runs import chosen_runs

LIST_SIZE = 9_000  # England's typical list size: practices = patients // 9,000
POOL_WORKERS = 2  # the columnar target is "on 2 cores"


@dataclass(frozen=True)
class Kind:
    fmt: str
    workers: int
    one_practice: bool
    one_bundle: bool = False

    def practices(self, patients: int) -> int:
        return 1 if self.one_practice else max(1, patients // LIST_SIZE)


KINDS = {
    "columnar": Kind("columnar", POOL_WORKERS, one_practice=False),
    "fhir": Kind("fhir", 1, one_practice=False),
    "fhir-one": Kind("fhir", 1, one_practice=True),
    "fhir-bundle": Kind("fhir", 1, one_practice=True, one_bundle=True),
}
DEFAULT_RUNS = [
    ("columnar", 10_000),
    ("columnar", 100_000),
    ("columnar", 1_000_000),
    ("fhir", 10_000),
    ("fhir", 100_000),
    ("fhir-one", 10_000),
    ("fhir-one", 100_000),
    ("fhir-bundle", 10_000),
]

# Synthesise the nation and issue the keys; report the practices and the size of the source.
_SYNTH = r"""
import json, sys
from pathlib import Path
import orjson
from gpdpr.custodian.keys import init, issue_practice
from gpdpr.synth.run import SynthRequest, synthesise
fmt, patients, practices, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
one_bundle = sys.argv[5] == "bundle"
nation, keys = root / "nation", root / "keys"
summary, _ = synthesise(SynthRequest(nation, practices, patients, 1, fmt))
init(keys)
records = 0
for p in summary.practices:
    issue_practice(keys, p.ods_code)
    folder = nation / p.ods_code
    if fmt == "columnar":
        about = json.loads((folder / "extract.json").read_text())
        records += sum(t["rows"] for t in about["tables"].values())
    elif not one_bundle:
        for path in folder.glob("*.ndjson"):
            with path.open("rb") as f:
                records += sum(1 for line in f if line.strip())
    else:  # every well-formed line becomes an entry of one collection Bundle
        with (folder / "everything.json").open("wb") as out:
            out.write(b'{"resourceType":"Bundle","id":"all","type":"collection","entry":[')
            for path in sorted(folder.glob("*.ndjson")):
                with path.open("rb") as f:
                    for line in f:
                        try:
                            orjson.loads(line)
                        except orjson.JSONDecodeError:
                            continue  # a planted damaged line would spoil the whole Bundle
                        comma = b"," if records else b""
                        out.write(comma + b'{"resource":' + line.strip() + b"}")
                        records += 1
                path.unlink()
            out.write(b"]}")
        about = json.loads((folder / "export.json").read_text())
        about["output"] = [{"type": "Bundle", "url": "https://x.example/everything.json"}]
        (folder / "export.json").write_text(json.dumps(about))
print(json.dumps({
    "records": records,
    "practices": [[p.ods_code, p.patients] for p in summary.practices],
}))
"""

# Extract every practice with a pool of forked workers. Nothing heavy is imported here before the
# fork: each worker imports the extractor itself (timed out of the run by the warm-up).
_EXTRACT = r"""
import json, resource, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

def warm_up():
    import gpdpr.practice.extract
    time.sleep(1)

def cpu(usage):
    return usage.ru_utime + usage.ru_stime

def task(practice, out, kit, url):
    from gpdpr.practice.extract import ExtractRequest, extract
    before = cpu(resource.getrusage(resource.RUSAGE_SELF))
    extract(ExtractRequest(Path(practice), Path(out), Path(kit), custodian=url))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return cpu(usage) - before, usage.ru_maxrss / 1024

root, workers, codes = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
(root / "packages").mkdir()
# The custodian's pseudonym service, for real, on the same cores: its work is in the timing.
from gpdpr.custodian.service import running
service = running(root / "keys")
url = service.__enter__()
with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
    for done in [pool.submit(warm_up) for _ in range(workers)]:
        done.result()
    started = time.perf_counter()
    futures = [
        pool.submit(task, str(root / "nation" / c), str(root / "packages" / c),
                    str(root / "keys" / "practices" / c), url)
        for c in codes
    ]
    results = [f.result() for f in futures]
    seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": seconds,
    "cpu_seconds": sum(c for c, _ in results),
    "worker_mb": max(mb for _, mb in results),
}))
"""


def _child(script: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"benchmark child failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def run_one(kind: Kind, patients: int) -> dict[str, Any]:
    practices = kind.practices(patients)
    with tempfile.TemporaryDirectory(prefix="gpdpr-bench-") as tmp:
        layout = "bundle" if kind.one_bundle else "files"
        made = _child(_SYNTH, kind.fmt, str(patients), str(practices), tmp, layout)
        # Largest practice first (longest-processing-time order), as a national run would hand
        # them out: a large practice left to the end keeps one worker busy while the other waits.
        by_size = sorted(made["practices"], key=lambda p: (-p[1], p[0]))
        codes = [str(code) for code, _ in by_size]
        load_before = os.getloadavg()[0]
        timed = _child(_EXTRACT, tmp, str(kind.workers), *codes)
        load_after = os.getloadavg()[0]
    return {
        "practices": len(codes),
        "largest": max(n for _, n in made["practices"]),
        "records": made["records"],
        "seconds": timed["seconds"],
        "cpu_seconds": timed["cpu_seconds"],
        "worker_mb": timed["worker_mb"],
        "busy": min(kind.workers, len(codes)),
        "load": f"{load_before:.1f} / {load_after:.1f}",
    }


def main() -> None:
    runs = chosen_runs(__doc__ or "", KINDS, DEFAULT_RUNS)

    console = Console(width=160)
    table = Table(
        title=f"gpdpr practice extract on {os.cpu_count()} cores "
        "(columnar: rows = supplier table rows; fhir: rows = NDJSON resources or Bundle entries)",
        header_style="bold",
    )
    for column in [
        "run",
        "patients",
        "practices",
        "largest practice",
        "workers",
        "source rows",
        "seconds",
        "rows/s",
        "rows/s per core",
        "cores used",
        "peak MB worker",
        "load avg",
    ]:
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, patients in runs:
        kind = KINDS[name]
        with console.status(f"{name} {patients:,} patients"):
            f = run_one(kind, patients)
        rate = f["records"] / f["seconds"]
        table.add_row(
            name,
            f"{patients:,}",
            f"{f['practices']:,.0f}",
            f"{f['largest']:,.0f}",
            f"{f['busy']:.0f} of {kind.workers}",
            f"{f['records']:,.0f}",
            f"{f['seconds']:.1f}",
            f"{rate:,.0f}",
            f"{rate / f['busy']:,.0f}",
            f"{f['cpu_seconds'] / f['seconds']:.2f}",
            f"{f['worker_mb']:,.0f}",
            f["load"],
        )
        console.print(f"done: {name} {patients:,} in {f['seconds']:.1f}s")
    console.print(table)
    console.print(
        "workers: busy workers of the pool (never more than there are practices); rows/s per core ="
        " rows/s / busy workers; cores used = the workers' CPU seconds in extract() / seconds (well"
        " under the busy workers: uneven practices, or the machine was shared); load avg = the"
        " machine's 1-minute load average before / after the timed child (above 2: shared cores)."
    )


if __name__ == "__main__":
    main()
