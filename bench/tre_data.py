"""Project views for the research environment benchmark, made directly with NumPy and PyArrow.

The views are what `gpdpr.tre.views.build` hands an engine (one Arrow table per table a
definition reads: `patient_id`, the project's 64-hex pseudonym, `patient_key`, its whole-number
key in the views, plus the columns read), made
here without the slow synthetic-records pipeline, seeded and deterministic, and cached as
Parquet under bench/out/tre-data/ (gitignored) so that a second run does not make them again.

Shapes, per PATIENTS people:

  patients                one row each: sex (F 50.6%, M 49.3%, U 0.1%), date_of_birth (first of
                          the month; ages 0-99, fewer after 60), region_code (the practice's, one
                          of England's 9 regions weighted by population), imd_decile (1-10)
  practice_registrations  ~1.1 each: every person registered at a home practice (practices =
                          PATIENTS // 2,000, list sizes varying, ODS-like codes such as A81001);
                          10% moved in from another practice (a first, ended registration and a
                          second starting 0-60 days later), 3% have left (their last one ended)
  clinical_events         ~30 each over 10 years (2016-2025), over-dispersed counts; codes drawn
                          from the catalogue's SNOMED CT concepts (never-collected ones left
                          out) with a skewed, 1/rank, distribution; `value` set for
                          measurements (HbA1c whole mmol/mol, blood pressure, BMI, ...)
  medications             ~25 each over the same 10 years, more skewed counts; dm+d products of
                          the catalogue's drug.* entries, 1/rank

Rows are grouped by person and people by practice, as the lake's files are. No event date is
null or before the person's birth; no person has two registrations starting on one day.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.spec import shipped
from gpdpr.terminology import load_catalogue

SEED = 1
VERSION = 2  # bump when the shapes change: a cached folder of another version is made again
CACHE = Path(__file__).resolve().parent / "out" / "tre-data"
CHUNK = 100_000  # people per block of event rows (each block its own seeded generator)
LIST_SIZE = 2_000  # people per practice: ~500 practices at 1,000,000
FIRST_DAY = date(2016, 1, 1)  # events and issues fall in 2016-2025
LAST_DAY = date(2025, 12, 31)
EVENTS_PER_PERSON = 30.0
MEDICATIONS_PER_PERSON = 25.0
MOVED_IN = 0.10
LEFT = 0.03
TABLES = ("patients", "practice_registrations", "clinical_events", "medications")

# England's regions and their populations (millions, ONS mid-2022).
REGIONS = {
    "E12000001": 2.7,  # North East
    "E12000002": 7.5,  # North West
    "E12000003": 5.5,  # Yorkshire and The Humber
    "E12000004": 4.9,  # East Midlands
    "E12000005": 6.0,  # West Midlands
    "E12000006": 6.4,  # East of England
    "E12000007": 8.9,  # London
    "E12000008": 9.4,  # South East
    "E12000009": 5.8,  # South West
}
# Measurements: mean, standard deviation, low, high, decimals.
VALUES = {
    "obs.hba1c": (42.0, 12.0, 20.0, 150.0, 0),
    "obs.systolic": (132.0, 17.0, 80.0, 230.0, 0),
    "obs.diastolic": (80.0, 10.0, 40.0, 130.0, 0),
    "obs.bmi": (27.5, 5.5, 14.0, 70.0, 1),
    "obs.weight": (78.0, 17.0, 30.0, 220.0, 1),
    "obs.height": (168.0, 10.0, 130.0, 210.0, 1),
    "obs.cholesterol": (5.1, 1.1, 2.0, 12.0, 1),
    "obs.egfr": (82.0, 20.0, 5.0, 140.0, 0),
    "obs.alcohol_units": (8.0, 8.0, 0.0, 100.0, 0),
}

Ints = npt.NDArray[np.int64]


def codes(system: str, prefix: str = "") -> list[tuple[str, str]]:
    """(catalogue key, code) of every concept of `system` (whose key starts with `prefix`) the
    service collects, in the catalogue's order."""
    excluded = shipped().excluded_codes()
    return [
        (c.key, c.code)
        for c in load_catalogue().concepts
        if c.system == system and c.key.startswith(prefix) and c.code not in excluded
    ]


def codelist(*keys: str) -> list[str]:
    """The codes filed under the catalogue keys."""
    return [c.code for key in keys for c in load_catalogue().codes(key)]


def folder_for(patients: int, root: Path = CACHE) -> Path:
    return root / f"v{VERSION}-seed{SEED}-{patients}"


def ensure(patients: int, root: Path = CACHE) -> tuple[Path, bool]:
    """The folder holding the views of `patients` people, made if it is not there yet; and
    whether it was made now."""
    folder = folder_for(patients, root)
    if all((folder / f"{t}.parquet").exists() for t in TABLES):
        return folder, False
    making = folder.with_name(folder.name + f".making-{os.getpid()}")
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir(parents=True)
    generate(patients, making)
    shutil.rmtree(folder, ignore_errors=True)
    making.rename(folder)
    return folder, True


def load(folder: Path, used: Mapping[str, Iterable[str]]) -> dict[str, pa.Table]:
    """The views a definition reading `used` ({table: columns}) runs on: patients always, and
    each table read, with patient_id, patient_key and only the columns read, as views.build
    makes them."""
    tables = {"patients": set(used.get("patients", ()))} | {t: set(c) for t, c in used.items()}
    return {
        name: pq.read_table(
            folder / f"{name}.parquet", columns=["patient_id", "patient_key", *sorted(columns)]
        )
        for name, columns in tables.items()
    }


def counts(folder: Path) -> dict[str, int]:
    return {t: pq.ParquetFile(folder / f"{t}.parquet").metadata.num_rows for t in TABLES}


# ---- making them -----------------------------------------------------------------------------


def _days(day: date) -> int:
    return day.toordinal() - date(1970, 1, 1).toordinal()


def _dates(days: Ints, mask: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    return pa.array(days.astype(np.int32), pa.int32(), mask=mask).cast(pa.date32())


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """n distinct-looking 64-hex pseudonyms (256 random bits each), as a project's are."""
    text = rng.bytes(32 * n).hex().encode()
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def _skewed(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Weights 1/rank over n choices, the ranks shuffled (seeded)."""
    ranks = rng.permutation(n) + 1
    weights = 1.0 / ranks
    return np.asarray(weights / weights.sum(), np.float64)


def _ods_codes(n: int) -> list[str]:
    letters = "ABCDEFGHJKLMNPY"
    return [f"{letters[i % len(letters)]}{81001 + i // len(letters)}" for i in range(n)]


def _people(patients: int, rng: np.random.Generator) -> tuple[pa.Table, Ints, Ints]:
    """The patients view, each person's home practice and their date of birth (days)."""
    practices = max(1, patients // LIST_SIZE)
    region_of_practice = rng.choice(
        len(REGIONS), practices, p=np.array(list(REGIONS.values())) / sum(REGIONS.values())
    )
    sizes = rng.gamma(4.0, 0.25, practices)
    home = np.sort(rng.choice(practices, patients, p=sizes / sizes.sum()))
    ages = np.arange(100)
    weights = np.where(ages < 60, 1.0, np.maximum(0.03, 1.0 - (ages - 60) / 40))
    age = rng.choice(100, patients, p=weights / weights.sum())
    months_back = age * 12 + rng.integers(0, 12, patients)
    born = (np.datetime64("2025-12") - months_back.astype("timedelta64[M]")).astype("datetime64[D]")
    born_days = born.astype(np.int64)
    sex = np.array(["F", "M", "U"])[rng.choice(3, patients, p=[0.506, 0.493, 0.001])]
    regions = np.array(list(REGIONS))[region_of_practice[home]]
    table = pa.table(
        {
            "patient_id": _hex_ids(rng, patients),
            "patient_key": pa.array(np.arange(patients), pa.int64()),
            "sex": pa.array(sex, pa.string()),
            "date_of_birth": _dates(born_days),
            "region_code": pa.array(regions, pa.string()),
            "imd_decile": pa.array(rng.integers(1, 11, patients), pa.int64()),
        }
    )
    return table, home, born_days


def _registrations(ids: pa.Array, home: Ints, born: Ints, rng: np.random.Generator) -> pa.Table:
    n = len(home)
    practices = int(home.max()) + 1
    codes = np.array(_ods_codes(practices))
    earliest, latest = _days(date(1990, 1, 1)), _days(date(2025, 6, 30))
    start = np.maximum(born, rng.integers(earliest, latest, n))
    moved = (rng.random(n) < MOVED_IN) & (start < latest - 60)
    # A mover's first registration, at another practice, ended; the home one started 0-60 days
    # after.
    first_end = start + 1 + (rng.random(n) * (latest - 30 - start)).astype(np.int64)
    second_start = first_end + rng.integers(0, 61, n)
    elsewhere = (home + rng.integers(1, max(2, practices), n)) % practices
    # The last registration of those who left has ended.
    last_start = np.where(moved, second_start, start)
    left = rng.random(n) < LEFT
    last_end = last_start + 1 + (rng.random(n) * (_days(LAST_DAY) - last_start)).astype(np.int64)
    who = np.repeat(np.arange(n), np.where(moved, 2, 1))
    firsts = np.zeros(len(who), bool)
    firsts[np.flatnonzero(moved[who])[::2]] = True  # the first of each mover's two rows
    is_last = ~firsts
    starts = np.where(firsts, start[who], last_start[who])
    ends = np.where(firsts, first_end[who], last_end[who])
    ended = firsts | (is_last & left[who])
    practice = np.where(firsts, elsewhere[who], home[who])
    return pa.table(
        {
            "patient_id": ids.take(pa.array(who)),
            "patient_key": pa.array(who, pa.int64()),
            "start_date": _dates(starts),
            "end_date": _dates(ends, mask=~ended),
            "practice": pa.array(codes[practice], pa.string()),
        }
    )


def _events(
    ids: pa.Array,
    born: Ints,
    lo: int,
    hi: int,
    rng: np.random.Generator,
    per_person: float,
    shape: float,
    vocabulary: list[tuple[str, str]],
    weights: npt.NDArray[np.float64],
    date_column: str,
    with_values: bool,
) -> pa.Table:
    """Rows of people lo..hi-1: a code and a date each (and a value for measurements)."""
    m = hi - lo
    counts = rng.poisson(per_person * rng.gamma(shape, 1.0 / shape, m))
    who = np.repeat(np.arange(lo, hi), counts)
    n = len(who)
    picked = rng.choice(len(vocabulary), n, p=weights)
    days = rng.integers(_days(FIRST_DAY), _days(LAST_DAY) + 1, n)
    columns: dict[str, Any] = {
        "patient_id": ids.take(pa.array(who)),
        "patient_key": pa.array(who, pa.int64()),
        "code": pa.array(np.array([c for _, c in vocabulary])[picked], pa.string()),
        date_column: _dates(np.maximum(days, born[who])),
    }
    if with_values:
        values = np.full(n, np.nan)
        for index, (key, _) in enumerate(vocabulary):
            if key not in VALUES:
                continue
            mean, sd, low, high, decimals = VALUES[key]
            rows = np.flatnonzero(picked == index)
            drawn = np.clip(rng.normal(mean, sd, len(rows)), low, high)
            values[rows] = np.round(drawn, decimals)
        columns["value"] = pa.array(values, pa.float64(), mask=np.isnan(values))
    return pa.table(columns)


def generate(patients: int, folder: Path) -> dict[str, int]:
    """Write the four views of `patients` people into `folder`; their row counts."""
    rng = np.random.default_rng([SEED, 0])
    people, home, born = _people(patients, rng)
    ids = people.column("patient_id").combine_chunks()
    pq.write_table(people, folder / "patients.parquet")
    registrations = _registrations(ids, home, born, rng)
    pq.write_table(registrations, folder / "practice_registrations.parquet")
    rows = {"patients": people.num_rows, "practice_registrations": registrations.num_rows}
    snomed = codes("snomed")
    dmd = codes("dmd", "drug.")
    shapes = {
        # table: (per person, gamma shape, vocabulary, date column, values)
        "clinical_events": (EVENTS_PER_PERSON, 2.0, snomed, "effective_date", True),
        "medications": (MEDICATIONS_PER_PERSON, 0.7, dmd, "issue_date", False),
    }
    for number, (name, (per_person, shape, vocabulary, column, values)) in enumerate(
        shapes.items(), start=1
    ):
        weights = _skewed(len(vocabulary), np.random.default_rng([SEED, number]))
        writer: pq.ParquetWriter | None = None
        rows[name] = 0
        for block, lo in enumerate(range(0, patients, CHUNK)):
            block_rng = np.random.default_rng([SEED, number, block])
            hi = min(patients, lo + CHUNK)
            table = _events(
                ids, born, lo, hi, block_rng, per_person, shape, vocabulary, weights, column, values
            )
            if writer is None:
                writer = pq.ParquetWriter(folder / f"{name}.parquet", table.schema)
            writer.write_table(table)
            rows[name] += table.num_rows
        assert writer is not None
        writer.close()
    return rows
