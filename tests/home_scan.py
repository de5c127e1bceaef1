"""Every file under a service home searched for needles (a person's pseudonyms, hashes, tokens),
each file as it is on disk and as what it holds once decoded:

- every file, byte for byte (binary needles, such as a run's 16-byte use tokens, only so);
- Parquet (the lake's data files, Delta checkpoints), by magic number whatever its name: every
  value of every column, as text;
- SQLite (central.db, the custodian's counts, a dummy centre's database): every value of every
  row of every table, and every page of the file and of its write-ahead log, each page owned by
  its table or index (dbstat) or free. A needle may be allowed in some tables' columns (the
  opt-out registry must keep the person to keep them out): a hit there, in a row or in a page
  of that table or its indexes, is not reported; anywhere else, free space included, it is.

A file that is compressed (gzip, zstd, zip) cannot be searched here and is reported as a hit,
so that nothing passes unsearched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SQLITE = b"SQLite format 3\x00"
PARQUET = b"PAR1"
COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PK\x03\x04")
WAL_HEADER, FRAME_HEADER = 32, 24


@dataclass(frozen=True)
class Needle:
    value: bytes
    label: str
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)  # table -> columns


@dataclass(frozen=True, order=True)
class Hit:
    path: str  # under the home
    where: str  # "bytes", "decoded", "row TABLE.COLUMN", "page of NAME", "not searchable"
    needle: str  # its label


def scan(home: Path, needles: list[Needle]) -> list[Hit]:
    """Every hit of every needle under `home` (see the module's docstring)."""
    hits: set[Hit] = set()
    files = sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink())
    sqlite_files = {p for p in files if p.read_bytes()[:16] == SQLITE}
    for path in files:
        name = str(path.relative_to(home))
        data = path.read_bytes()
        if path in sqlite_files or path.with_name(path.name.removesuffix("-wal")) in sqlite_files:
            continue  # page by page, below
        if data.startswith(COMPRESSED):
            hits.add(Hit(name, "not searchable", "compressed"))
        hits |= {Hit(name, "bytes", n.label) for n in needles if n.value in data}
        if data[:4] == PARQUET:
            text = _as_text(pq.read_table(path))
            hits |= {Hit(name, "decoded", n.label) for n in needles if n.value in text}
    for path in sqlite_files:
        hits |= _sqlite(home, path, needles)
    return sorted(hits)


def _as_text(table: pa.Table) -> bytes:
    flat = [c for c, f in zip(table.columns, table.schema, strict=True) if not _nested(f.type)]
    names = [f.name for f in table.schema if not _nested(f.type)]
    sink = pa.BufferOutputStream()
    if flat:
        plain = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in flat]
        pacsv.write_csv(pa.table(plain, names=names), sink)
    nested = [
        c.to_pylist() for c, f in zip(table.columns, table.schema, strict=True) if _nested(f.type)
    ]
    return bytes(sink.getvalue()) + orjson.dumps(nested, default=str)


def _nested(kind: pa.DataType) -> bool:
    return pa.types.is_nested(kind) or pa.types.is_binary(kind)


def _sqlite(home: Path, path: Path, needles: list[Needle]) -> set[Hit]:
    name = str(path.relative_to(home))
    body = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    log = wal.read_bytes() if wal.exists() else b""  # before opening: closing may checkpoint
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        size = con.execute("pragma page_size").fetchone()[0]
        table_of = dict(con.execute("select name, tbl_name from sqlite_master").fetchall())
        owner = {
            page: table_of.get(n, n) for n, page in con.execute("select name, pageno from dbstat")
        }
        hits: set[Hit] = set()
        frame = FRAME_HEADER + size
        for needle in needles:
            for at in _all(body, needle.value):
                table = owner.get(at // size + 1, "free space")
                if table not in needle.allowed:
                    hits.add(Hit(name, f"page of {table}", needle.label))
            for at in _all(log, needle.value):
                start = WAL_HEADER + (at - WAL_HEADER) // frame * frame
                table = owner.get(int.from_bytes(log[start : start + 4], "big"), "free space")
                if table not in needle.allowed:
                    hits.add(Hit(name + "-wal", f"page of {table}", needle.label))
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            cursor = con.execute(f'select * from "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    text = value if isinstance(value, bytes) else str(value).encode()
                    hits |= {
                        Hit(name, f"row {table}.{column}", n.label)
                        for n in needles
                        if n.value in text and column not in n.allowed.get(table, ())
                    }
        return hits
    finally:
        con.close()


def _all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    return found
