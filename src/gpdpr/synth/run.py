"""`gpdpr synth`: build a nation, then write each practice's extract, in parallel, all or nothing.

Output goes to a staging folder beside the target and is renamed into place only when every
practice is written, so a failed or interrupted run leaves nothing behind. Each practice is drawn in
blocks of registrations with its own random streams, so the output is the same for a seed whatever
the number of workers, and memory stays bounded by the block size, not the practice or the nation.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.supplier import schema
from gpdpr.synth.fhir import FhirWriter
from gpdpr.synth.finish import FAULT_COLUMN, IdCounter, finish_block, practice_tables
from gpdpr.synth.nation import Nation, NationConfig, build_nation, check_config
from gpdpr.synth.records import FAULT_NAMES, Block, generate_block

FORMATS = ("fhir", "columnar")
BLOCK_REGISTRATIONS = 20_000  # bounds memory per worker whatever the practice's size
DEFAULT_AS_OF = date(2026, 10, 31)  # fixed so that a seed means the same nation on any day
SUMMARY_FILE = "synth-summary.json"
MAX_MESS_RATE = 0.5


@dataclass(frozen=True)
class SynthRequest:
    out: Path
    practices: int
    patients: int
    seed: int
    format: str
    as_of: date = DEFAULT_AS_OF
    mess_rate: float | None = None  # None: the default in data/planted.toml
    workers: int = 0  # 0: one per core

    def nation_config(self) -> NationConfig:
        return NationConfig(self.practices, self.patients, self.seed, self.as_of)


@dataclass
class PracticeSummary:
    ods_code: str
    patients: int
    rows: dict[str, int]
    faults: dict[str, dict[str, int]]
    resources: dict[str, int] = field(default_factory=dict)


@dataclass
class SynthSummary:
    request: dict[str, Any]
    people: int
    practices: list[PracticeSummary]
    seconds: float

    @property
    def patients(self) -> int:
        return sum(p.patients for p in self.practices)

    def total_rows(self) -> dict[str, int]:
        return _add_up(p.rows for p in self.practices)

    def total_faults(self) -> dict[str, int]:
        return _add_up(per_table for p in self.practices for per_table in p.faults.values())

    def total_resources(self) -> dict[str, int]:
        return _add_up(p.resources for p in self.practices)


def _add_up(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            totals[key] = totals.get(key, 0) + n
    return totals


def validate(request: SynthRequest) -> None:
    """Every reason the run cannot succeed, found before anything is written."""
    if request.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {request.format!r})")
    try:
        check_config(request.nation_config())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if request.mess_rate is not None and not 0 <= request.mess_rate <= MAX_MESS_RATE:
        raise UserError(
            f"--mess-rate must be between 0 and {MAX_MESS_RATE} (got {request.mess_rate})"
        )
    out = request.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder: choose a new --out")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write to {out}: {parent} is not an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {out}: no permission to create files in {parent}")


# The nation is built once in the parent and inherited by forked workers, never pickled.
_NATION: Nation | None = None
_REGS_BY_PRACTICE: list[np.ndarray] = []


def _write_practice(index: int, staging: str, fmt: str, mess_rate: float) -> PracticeSummary:
    nation = _NATION
    assert nation is not None, "workers must be forked after the nation is built"
    practice = nation.practices[index]
    folder = Path(staging) / practice.ods_code
    folder.mkdir()
    regs = _REGS_BY_PRACTICE[index]
    seed = nation.config.seed
    once = practice_tables(nation, practice)
    rows = {name: t.num_rows for name, t in once.items()}
    faults: dict[str, dict[str, int]] = {}
    ids = IdCounter({})

    if fmt == "columnar":
        writers = {
            name: pq.ParquetWriter(
                folder / f"{name}.parquet", schema.TABLES[name], **schema.parquet_options(name)
            )
            for name in schema.TABLES
        }
        for name, table in once.items():
            writers[name].write_table(table)
    else:
        fhir = FhirWriter(folder, practice.ods_code, np.random.default_rng([seed, 2, index]))
        fhir.practice(once["organisation"], once["staff"])

    for block_no, first in enumerate(range(0, len(regs), BLOCK_REGISTRATIONS)):
        block = Block(nation, practice, regs[first : first + BLOCK_REGISTRATIONS], 1 + first)
        rng = np.random.default_rng([seed, 1, index, block_no])
        tables = finish_block(generate_block(block, rng, mess_rate), ids)
        for name, table in tables.items():
            rows[name] = rows.get(name, 0) + table.num_rows
            if FAULT_COLUMN in table.column_names:
                _count_faults(faults.setdefault(name, {}), table)
        if fmt == "columnar":
            for name, table in tables.items():
                writers[name].write_table(_without_fault(table).cast(schema.TABLES[name]))
        else:
            fhir.block(tables)

    if fmt == "columnar":
        for writer in writers.values():
            writer.close()
        resources: dict[str, int] = {}
    else:
        fhir.close()
        resources = fhir.counts
        _write_json(folder / "export.json", _bulk_manifest(practice.ods_code, nation, resources))
    if fmt == "columnar":
        _write_json(folder / "extract.json", _columnar_manifest(practice.ods_code, nation, rows))
    patients = rows.get("patients", 0)
    return PracticeSummary(practice.ods_code, patients, rows, faults, resources)


def _without_fault(table: pa.Table) -> pa.Table:
    if FAULT_COLUMN in table.column_names:
        return table.drop_columns([FAULT_COLUMN])
    return table


def _count_faults(into: dict[str, int], table: pa.Table) -> None:
    values, counts = np.unique(table.column(FAULT_COLUMN).to_numpy(), return_counts=True)
    for value, count in zip(values, counts, strict=True):
        if value:
            into[FAULT_NAMES[value]] = into.get(FAULT_NAMES[value], 0) + int(count)


def _bulk_manifest(ods: str, nation: Nation, resources: dict[str, int]) -> dict[str, Any]:
    """Shaped like a FHIR Bulk Data export's completion manifest, with relative file urls."""
    return {
        "transactionTime": f"{nation.config.as_of.isoformat()}T23:59:59Z",
        "request": f"Group/{ods.lower()}/$export",
        "requiresAccessToken": False,
        "output": [
            {"type": kind, "url": f"{kind}.ndjson", "count": count}
            for kind, count in resources.items()
        ],
        "error": [],
    }


def _columnar_manifest(ods: str, nation: Nation, rows: dict[str, int]) -> dict[str, Any]:
    return {
        "supplier_extract": "gpdpr synthetic GP system",
        "ods_code": ods,
        "extracted_at": f"{nation.config.as_of.isoformat()}T23:59:59Z",
        "tables": {name: {"file": f"{name}.parquet", "rows": n} for name, n in rows.items()},
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def synthesise(
    request: SynthRequest, on_practice_done: Callable[[PracticeSummary], None] | None = None
) -> tuple[SynthSummary, Nation]:
    """Generate the nation into request.out. Raises UserError for anything the caller can fix."""
    global _NATION, _REGS_BY_PRACTICE
    validate(request)
    started = time.perf_counter()
    out = request.out
    staging = out.resolve().parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
    summaries: list[PracticeSummary] = []
    try:
        nation = build_nation(request.nation_config())
        mess_rate = (
            nation.params.default_mess_rate if request.mess_rate is None else request.mess_rate
        )
        order = np.argsort(nation.registrations.practice, kind="stable")
        bounds = np.searchsorted(
            nation.registrations.practice[order], np.arange(request.practices + 1)
        )
        _NATION = nation
        _REGS_BY_PRACTICE = [order[bounds[i] : bounds[i + 1]] for i in range(request.practices)]
        workers = request.workers or os.cpu_count() or 1
        args = [(i, str(staging), request.format, mess_rate) for i in range(request.practices)]
        if workers == 1:
            for a in args:
                summaries.append(_write_practice(*a))
                if on_practice_done:
                    on_practice_done(summaries[-1])
        else:
            pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"))
            try:
                for practice_summary in pool.map(_write_practice, *zip(*args, strict=True)):
                    summaries.append(practice_summary)
                    if on_practice_done:
                        on_practice_done(practice_summary)
            finally:  # on an interruption, do not wait for practices not yet started
                pool.shutdown(wait=True, cancel_futures=True)
        summary = SynthSummary(
            request={
                **asdict(request),
                "out": str(out),
                "as_of": request.as_of.isoformat(),
                "mess_rate": mess_rate,
            },
            people=len(nation.people),
            practices=summaries,
            seconds=time.perf_counter() - started,
        )
        _write_json(staging / SUMMARY_FILE, _summary_json(summary))
        if out.exists():
            out.rmdir()  # validated empty
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _NATION, _REGS_BY_PRACTICE = None, []
    summary.seconds = time.perf_counter() - started
    return summary, nation


def _summary_json(summary: SynthSummary) -> dict[str, Any]:
    """What was made, without timings: the same seed gives the same file."""
    return {
        "generator": "gpdpr synth",
        "request": {k: v for k, v in summary.request.items() if k not in ("out", "workers")},
        "people": summary.people,
        "patients": summary.patients,
        "rows": summary.total_rows(),
        "faults": summary.total_faults(),
        "resources": summary.total_resources(),
        "practices": [asdict(p) for p in summary.practices],
    }
