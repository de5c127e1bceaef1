"""Reading the lake with DuckDB, at a named lake version.

Each table is handed to DuckDB as the Arrow dataset of the Delta version the lake version names,
so a query sees exactly one committed state, the partition column included.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from gpdpr.lake.store import Snapshot
from gpdpr.lake.tables import LEDGER


def connect(snapshot: Snapshot) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view for each lake table (and `packages`, the ledger)."""
    con = duckdb.connect()
    con.execute("set enable_progress_bar = false")
    for name in snapshot.lake.data:
        con.register(name, snapshot.delta(name).to_pyarrow_dataset())
    con.register("packages", snapshot.delta(LEDGER).to_pyarrow_dataset())
    return con


def digest(snapshot: Snapshot, leave_out: set[str] | None = None) -> dict[str, tuple[int, int]]:
    """(rows, content hash) of every data table, whatever order its rows are stored in: the
    XOR of an MD5 of each whole row. Rows of the people in `leave_out` (patient pseudonyms)
    are left out, to check that erasing them touched nobody else."""
    con = connect(snapshot)
    con.register("leave_out", pa.table({"p": pa.array(sorted(leave_out or ()), pa.string())}))
    result: dict[str, tuple[int, int]] = {}
    for name, table in snapshot.lake.data.items():
        where = (
            f"where {table.patient} not in (select p from leave_out)"
            if leave_out and table.patient
            else ""
        )
        rows, xor = con.sql(
            f"select count(*), coalesce(bit_xor(md5_number(cast(r as varchar))), 0) "
            f"from {name} r {where}"
        ).fetchall()[0]
        result[name] = (int(rows), int(xor))
    return result
