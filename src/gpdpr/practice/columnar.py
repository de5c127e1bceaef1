"""Reads a supplier's columnar extract (Parquet, gpdpr.supplier.schema) into canonical batches.

Only the columns the specification can use are read from disk; names, addresses, contact details
and free text are never loaded. Parquet row groups are read a batch at a time, so memory does not
grow with the size of a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.practice.source import (
    PATIENT_COLUMNS,
    RECORD_COLUMNS,
    Batch,
    Practice,
    ReaderFault,
    Staff,
    utc_naive,
)
from gpdpr.supplier.schema import HIGH_CARDINALITY, ID_COLUMN, TABLES

MANIFEST = "extract.json"


def is_columnar(folder: Path) -> bool:
    return (folder / MANIFEST).exists()


class ColumnarReader:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            about = orjson.loads((folder / MANIFEST).read_bytes())
            ods = str(about["ods_code"])
            extracted_at = utc_naive(datetime.fromisoformat(str(about["extracted_at"])))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(
                f"{folder / MANIFEST} is not a readable supplier extract manifest (it must give "
                "ods_code and extracted_at); ask the supplier for the extract again"
            ) from None
        for name in TABLES:
            if not (folder / f"{name}.parquet").exists():
                raise UserError(
                    f"{folder} has no {name}.parquet: the supplier extract is incomplete; "
                    "ask for it again"
                )
        self.practice = Practice(ods, "columnar", extracted_at)

    def _file(self, table: str, columns: list[str]) -> pq.ParquetFile:
        path = self.folder / f"{table}.parquet"
        # Repetitive text (codes, statuses, units) stays dictionary-encoded from file to package:
        # never expanded into millions of strings only to be encoded again.
        repetitive = [
            f.name
            for f in TABLES[table]
            if pa.types.is_string(f.type) and f.name not in HIGH_CARDINALITY
        ]
        try:
            parquet = pq.ParquetFile(path, read_dictionary=repetitive, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(
                f"cannot read {path}: {exc}; the file is damaged, ask the supplier for it again"
            ) from None
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise UserError(
                f"{path} lacks the column(s) {', '.join(missing)}; it is not a supplier extract "
                "table gpdpr knows"
            )
        return parquet

    def _batches(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """A row group at a time: reading whole row groups decodes columns in parallel, which
        batch iteration does not."""
        parquet = self._file(table, columns)
        try:
            for group in range(parquet.metadata.num_row_groups):
                yield parquet.read_row_group(group, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(
                f"cannot read {self.folder / table}.parquet: {exc}; the file is damaged, "
                "ask the supplier for it again"
            ) from None

    def staff(self) -> Staff:
        columns = ["staff_id", "sds_user_id", "role"]
        table = pa.concat_tables(list(self._batches("staff", columns)))
        return Staff(
            table["staff_id"].to_pylist(),
            table["sds_user_id"].to_pylist(),
            table["role"].to_pylist(),
        )

    def patients(self) -> Iterator[Batch]:
        yield from self._canonical("patients", list(PATIENT_COLUMNS))

    def records(self, table: str) -> Iterator[Batch]:
        yield from self._canonical(table, list(RECORD_COLUMNS[table]))

    def _canonical(self, table: str, wanted: list[str]) -> Iterator[Batch]:
        id_column = ID_COLUMN[table]
        refs = ["patient_id"] if table != "patients" else []
        if "staff_id" in TABLES[table].names:
            refs.append("staff_id")
        present = [c for c in wanted if c in TABLES[table].names]
        first_row = 1
        for batch in self._batches(table, [id_column, *refs, *present]):
            n = batch.num_rows
            ids = batch.column(id_column)
            columns: dict[str, pa.Array | pa.ChunkedArray] = {
                "_row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                "_key": ids,
                "_bad_date": pa.array(np.zeros(n, dtype=bool)),
                "record_id": ids,  # the supplier's integer; written as text
            }
            if table == "patients":
                columns["patient_ref"] = ids
            else:
                columns["patient_ref"] = batch.column("patient_id")
                columns["staff_ref"] = (
                    batch.column("staff_id") if "staff_id" in refs else pa.nulls(n, pa.int64())
                )
            source_types = {**PATIENT_COLUMNS, **RECORD_COLUMNS.get(table, {})}
            for name in wanted:
                if name in present:
                    columns[name] = _as(batch.column(name), source_types[name])
                else:  # e.g. registrations have no status in this format
                    columns[name] = pa.nulls(n, source_types[name])
            first_row += n
            yield Batch(pa.table(columns), f"{table}.parquet")

    def opt_out_events(self, codes: set[str]) -> pa.Table:
        columns = ["patient_id", "code", "effective_date", "recorded_at", "status", "last_modified"]
        value_set = pa.array(sorted(codes), pa.string())
        parts = [
            batch.filter(pc.is_in(batch.column("code"), value_set=value_set))
            for batch in self._batches("clinical_events", columns)
        ]
        if not parts:
            raise UserError(f"{self.folder}/clinical_events.parquet holds no row groups")
        table = pa.concat_tables(parts).rename_columns(["patient_ref", *columns[1:]])
        return table.append_column("_bad_date", pa.array([False] * table.num_rows, pa.bool_()))

    def faults(self) -> list[ReaderFault]:
        return []  # a Parquet row is always a record; its faults are found by the rules

    def close(self) -> None:
        pass  # nothing is put aside


def _as(values: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """A column in its canonical type; dictionary-encoded text is left encoded."""
    if pa.types.is_dictionary(values.type) and values.type.value_type == kind:
        return values
    return values.cast(kind)
