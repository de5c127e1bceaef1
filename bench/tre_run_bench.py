"""Benchmark the research environment's whole run on a lake: from one lake version's files to
the controlled outputs and the use tokens, as a researcher waits for it.

    .venv/bin/python bench/tre_run_bench.py                     # 100k and 1M, DuckDB
    .venv/bin/python bench/tre_run_bench.py --scales 100000 --engines duckdb spark
    .venv/bin/python bench/tre_run_bench.py --scales 10000000 --workloads measure

The lake of each scale is written once by bench/tre_lake.py (from the engine benchmark's
seeded people) and cached. Each workload (the dataset and the 60-month measure of
bench/tre_bench.py), engine and scale then runs in a fresh child process, which times, once:

  plan      `views.plan`: the project's views as queries over the lake version's files (reads
            the Delta logs, no data)
  engine    `engine.run(definition, plan)`: the engine reads the lake's files in place (only the
            columns and rows the views need), makes the population with a use token per person
            read (one SHA-256 under the run's own key, in the engine's SQL), and computes the
            dataset or measure
  control   disclosure control (`release.control.control`)
  tokens    the use tokens written to the run's folder as a run records them
            (`transparency.uses.keep`)

Before and after each scale's runs it times a fixed piece of work (SHA-256 and arithmetic, one
core) and prints the machine's pace: on a shared machine the same run can take a tenth longer
from one turn to the next, and a slower pace says the machine, not the code, was slower.

With more than one engine, each workload's answers (the dataset, or the measure's rows) are
compared between the engines at every scale, every value of every row: the benchmark stops if
they differ, and says so when they agree.

What is not timed: the agreement's authorisation and the run's record (a few small rows), which
do not grow with the lake. Peak MB is the high-water mark of resident memory of the child and
its descendants (Spark's JVM). DuckDB runs within its memory limit (GPDPR_TRE_MEMORY, default
engines.base.DEFAULT_MEMORY), spilling beyond it to a folder of the run's own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))


import tre_bench
import tre_lake

CHILD = "--child"
KEY = b"benchmark project key, 32 bytes!"


def child(args: list[str]) -> None:
    from gpdpr.lake.store import Lake
    from gpdpr.transparency import uses
    from gpdpr.tre import views
    from gpdpr.tre.engines.base import Engine
    from gpdpr.tre.engines.duckdb import DuckDBEngine
    from gpdpr.tre.query import nodes as n
    from gpdpr.tre.release.control import control

    workload, engine_name, folder, answer = args[0], args[1], Path(args[2]), Path(args[3])
    definition = tre_bench._received(
        tre_bench.dataset_definition() if workload == "dataset" else tre_bench.measure_definition()
    )
    engine: Engine = DuckDBEngine() if engine_name == "duckdb" else tre_bench._spark_engine()
    figures: dict[str, Any] = {}
    tre_bench.reset_peak()
    started = time.perf_counter()
    snapshot = Lake.open(folder / "lake").snapshot()
    scope = views.ViewScope(date(2016, 1, 1), date(2026, 1, 1), {}, frozenset())
    used = n.columns_used(definition)
    lake = views.plan(snapshot, scope, used, KEY)
    figures["plan"] = time.perf_counter() - started
    mark = time.perf_counter()
    results = engine.run(definition, lake)
    figures["engine"] = time.perf_counter() - mark
    mark = time.perf_counter()
    control(definition, results)
    figures["control"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_folder:
        assert results.uses is not None
        figures["people"] = uses.keep(Path(run_folder), results.uses)
    figures["tokens"] = time.perf_counter() - mark
    figures["whole"] = time.perf_counter() - started
    figures["peak_mb"] = tre_bench.peak_mb()
    # The answer, in one order, for the parent to compare between engines (not timed).
    found = (
        results.dataset if results.dataset is not None else next(iter(results.measures.values()))
    )
    pq.write_table(found.sort_by([(c, "ascending") for c in found.column_names]), answer)
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--engines", nargs="*", default=["duckdb"], choices=["duckdb", "spark"])
    parser.add_argument(
        "--workloads", nargs="*", default=["dataset", "measure"], choices=["dataset", "measure"]
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each this many times (a fresh child each) and show the median of each figure",
    )
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; DuckDB memory limit: {_memory()}; runs each: {args.repeat}")
    header = "| patients | workload | engine | plan s | engine s | control s | tokens s "
    header += "| whole s | s per M patients | peak MB |"
    rows = [header, "|" + "---|" * 10]
    answers = Path(tempfile.mkdtemp(prefix="gpdpr-bench-answers-"))
    for patients in args.scales:
        print(f"lake of {patients:,} patients …", flush=True)
        folder = tre_lake.ensure(patients)
        before = _machine_pace()
        for workload in args.workloads:
            for engine in args.engines:
                answer = answers / f"{patients}-{workload}-{engine}.parquet"
                f = _median([_once(workload, engine, folder, answer) for _ in range(args.repeat)])
                rows.append(
                    f"| {patients:,} | {workload} | {engine} | {f['plan']:.2f} | {f['engine']:.2f} "
                    f"| {f['control']:.2f} | {f['tokens']:.2f} | {f['whole']:.2f} "
                    f"| {f['whole'] / patients * 1e6:.2f} | {f['peak_mb']:.0f} |"
                )
                print(rows[-1], flush=True)
            _agree(answers, patients, workload, args.engines)
        print(
            f"the machine's pace at {patients:,}: a fixed piece of work took {before:.2f} s "
            f"before these runs and {_machine_pace():.2f} s after (the same work: a slower "
            "machine takes longer)",
            flush=True,
        )
    print("\n".join(rows))


def _once(workload: str, engine: str, folder: Path, answer: Path) -> dict[str, float]:
    """One run's figures, timed in a fresh child process."""
    done = subprocess.run(
        [sys.executable, __file__, CHILD, workload, engine, str(folder), str(answer)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{workload} on {engine} at {folder.name} failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (each figure on its own: the run of the median
    whole time need not have the median peak)."""
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def _agree(answers: Path, patients: int, workload: str, engines: list[str]) -> None:
    """Stop unless every engine gave the same answer (every value, every row)."""
    found = {e: pq.read_table(answers / f"{patients}-{workload}-{e}.parquet") for e in engines}
    first = engines[0]
    for engine in engines[1:]:
        if not found[engine].equals(found[first]):
            sys.exit(f"{workload} at {patients:,}: {engine} and {first} gave different answers")
    if len(engines) > 1:
        print(
            f"{workload} at {patients:,}: {' and '.join(engines)} gave the same answer, "
            f"{found[first].num_rows:,} rows",
            flush=True,
        )


def _machine_pace() -> float:
    """Seconds a fixed piece of work (SHA-256 and integer arithmetic, one core) takes now: on a
    shared machine the same run can take a tenth longer from one turn to the next, and this
    says whether the machine, not the code, was slower. The fastest of three tries."""
    tries = []
    for _ in range(3):
        started = time.perf_counter()
        digest = b""
        for _ in range(600_000):
            digest = hashlib.sha256(digest).digest()
        sum(i * i for i in range(1_500_000))
        tries.append(time.perf_counter() - started)
    return min(tries)


def _memory() -> str:
    from gpdpr.tre.engines.base import memory

    return memory()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2:])
    else:
        main()
