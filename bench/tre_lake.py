"""A lake of N patients for the whole-run benchmark, written directly (not through synthetic
practices, extraction and collection, which would take hours at 10 million).

The people, registrations, events and medications are those of bench/tre_data.py (the engine
benchmark's views, seeded and cached), turned back into the lake's own tables: each person's
rows in the partition of their home practice (their latest registration's), dates of birth as
year and month, every other field of the lake's file schema present and empty. The lake is
cached under bench/out/tre-lake/ (gitignored) beside the views it was made from.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import tre_data
from gpdpr.lake.store import Lake

CACHE = Path(__file__).resolve().parent / "out" / "tre-lake"
# The lake's layout, in the cache folder's name: 3 since every table naming a patient carries
# their number (gpdpr.lake.tables.PERSON), which a lake made before would lack; 4 since each
# file's name says which columns it holds (gpdpr.lake.tables.columns_tag).
LAYOUT = 4
# bench/tre_data.py's view -> the lake table it is read from.
LAKE_TABLE = {
    "patients": "patients",
    "practice_registrations": "registrations",
    "clinical_events": "clinical_events",
    "medications": "medications",
}


def ensure(patients: int, say: Callable[[str], None] = print) -> Path:
    """The folder of the lake of `patients` people (its `lake` inside), made if not there."""
    views, _ = tre_data.ensure(patients)
    folder = CACHE / f"lake{LAYOUT}-{views.name}"
    if (folder / "lake" / "_lake").exists() and (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lake = Lake.open(folder / "lake")
    registrations = pq.read_table(views / "practice_registrations.parquet")
    home = _home_practices(registrations, patients)
    with lake.writing() as tx:
        for view, table in LAKE_TABLE.items():
            say(f"  writing {table} of {patients:,} people")
            # A row group at a time (the views are written a block of people at a time, who
            # share few practices): at 10 million people a table would not fit in memory.
            source = pq.ParquetFile(views / f"{view}.parquet")
            for group in range(source.num_row_groups):
                rows = source.read_row_group(group)
                practice = home.take(rows.column("patient_key"))
                data = _lake_rows(table, rows, lake.data[table].file_schema)
                for code, part in _by_practice(data, practice):
                    tx.write(table, code, part)
        tx.commit("load", {"benchmark": patients})
    (folder / "done").write_text("")
    return folder


def _home_practices(registrations: pa.Table, patients: int) -> pa.Array:
    """Each person's practice (by patient key): that of their latest registration."""
    ordered = registrations.sort_by([("patient_key", "ascending"), ("start_date", "ascending")])
    keys = ordered.column("patient_key").to_numpy()
    last = np.flatnonzero(np.append(keys[1:] != keys[:-1], True))
    home = ordered.column("practice").take(pa.array(last))
    if len(home) != patients:
        raise AssertionError(f"{len(home)} people registered of {patients}")
    return home.combine_chunks()


def _lake_rows(table: str, rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """The view's rows as the lake's file schema has them."""
    n = rows.num_rows
    columns = {}
    for field in schema:
        name = field.name
        if name == "patient":
            columns[name] = rows.column("patient_id")
        elif name in ("birth_year", "birth_month"):
            born = rows.column("date_of_birth")
            part = pc.year(born) if name == "birth_year" else pc.month(born)
            columns[name] = part.cast(field.type)
        elif name == "record_id":
            columns[name] = pa.array(np.arange(n)).cast(pa.string())
        elif name in rows.column_names:
            columns[name] = rows.column(name).cast(field.type)
        else:
            columns[name] = pa.nulls(n, field.type)
    return pa.table(columns, schema=schema)


def _by_practice(data: pa.Table, practice: pa.Array) -> list[tuple[str, pa.Table]]:
    order = pc.sort_indices(practice)
    data, practice = data.take(order), practice.take(order)
    codes = practice.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.append(True, codes[1:] != codes[:-1]))
    ends = np.append(starts[1:], len(codes))
    return [(str(codes[s]), data.slice(s, e - s)) for s, e in zip(starts, ends, strict=True)]
