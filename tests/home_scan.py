"""Every file under a service home searched for needles (a person's pseudonyms, hashes, tokens),
each file as it is on disk and as what it holds once decoded:

- every file, byte for byte (binary needles, such as a run's 16-byte use tokens, only so);
- Parquet (the lake's data files, Delta checkpoints), by magic number whatever its name: every
  distinct value of every text or binary column, and nested columns as JSON (numbers, dates and
  flags cannot hold a needle: every needle is 16 bytes or more of a hash);
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick
import orjson
import pyarrow as pa
import pyarrow.compute as pc
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
    finder = _finder(needles)
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
        hits |= {Hit(name, "bytes", needles[i].label) for _, i in _found(finder, data)}
        if data[:4] == PARQUET:
            text = _as_text(pq.read_table(path))
            hits |= {Hit(name, "decoded", needles[i].label) for _, i in _found(finder, text)}
    for path in sqlite_files:
        hits |= _sqlite(home, path, needles, finder)
    return sorted(hits)


def _finder(needles: list[Needle]) -> ahocorasick.Automaton:
    """All needles in one automaton, over bytes read as Latin-1 (one character a byte)."""
    automaton = ahocorasick.Automaton()
    for i, needle in enumerate(needles):
        key = needle.value.decode("latin-1")
        automaton.add_word(key, [*automaton.get(key, []), i])
    automaton.make_automaton()
    return automaton


def _found(finder: ahocorasick.Automaton, data: bytes) -> Iterator[tuple[int, int]]:
    """(where it starts, which needle) for every needle in `data`."""
    text = data.decode("latin-1")
    for end, which in finder.iter(text):
        for i in which:
            yield end, i


def stored(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as its values are: a dictionary's values looked up, and a UUID's (the lake's
    number for a person, gpdpr.lake.tables.NUMBER) 16 bytes, which scanners search like any
    other bytes."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if isinstance(kind, pa.BaseExtensionType):
        column = pa.chunked_array([c.storage for c in column.chunks], kind.storage_type)
    return column


def _as_text(table: pa.Table) -> bytes:
    """What a needle could be in once decoded: each distinct value of every text or binary
    column, and nested columns (a Delta checkpoint's actions) as JSON. Numbers, dates and
    flags cannot hold a pseudonym or a token, and are left out."""
    parts = []
    for column in table.columns:
        column = stored(column)
        kind = column.type
        if pa.types.is_nested(kind):
            parts.append(orjson.dumps(column.to_pylist(), default=str))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            parts.append("\n".join(v for v in pc.unique(column).to_pylist() if v).encode())
        elif pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind):
            parts.append(b"\n".join(v for v in pc.unique(column).to_pylist() if v))
    return b"\n".join(parts)


def _sqlite(
    home: Path, path: Path, needles: list[Needle], finder: ahocorasick.Automaton
) -> set[Hit]:
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
        for end, i in _found(finder, body):
            table = owner.get(end // size + 1, "free space")
            if table not in needles[i].allowed:
                hits.add(Hit(name, f"page of {table}", needles[i].label))
        for end, i in _found(finder, log):
            start = WAL_HEADER + (end - WAL_HEADER) // frame * frame
            table = owner.get(int.from_bytes(log[start : start + 4], "big"), "free space")
            if table not in needles[i].allowed:
                hits.add(Hit(name + "-wal", f"page of {table}", needles[i].label))
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            cursor = con.execute(f'select * from "{table}"')
            columns = [d[0] for d in cursor.description]
            values: list[list[bytes]] = [[] for _ in columns]
            for row in cursor:
                for held, value in zip(values, row, strict=True):
                    if value is not None:
                        held.append(value if isinstance(value, bytes) else str(value).encode())
            for column, held in zip(columns, values, strict=True):
                hits |= {
                    Hit(name, f"row {table}.{column}", needles[i].label)
                    for _, i in _found(finder, b"\0".join(held))
                    if column not in needles[i].allowed.get(table, ())
                }
        return hits
    finally:
        con.close()
