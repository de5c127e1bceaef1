"""Reading back everything an extract package holds, decoded, to look for text that must not be
there: every file's raw bytes, and every value of every Parquet table as text."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def package_text(package: Path) -> str:
    """The package's bytes (signature and manifest included) and its tables' decoded values,
    as one lower-case text to search."""
    parts: list[str] = []
    for path in sorted(package.rglob("*")):
        if not path.is_file():
            continue
        parts.append(path.read_bytes().decode("utf-8", "replace"))
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.columns:
                parts.extend(str(v) for v in column.to_pylist())
    return "\n".join(parts).lower()


def hits(package: Path, canaries: list[str]) -> list[str]:
    text = package_text(package)
    return [c for c in canaries if c.lower() in text]
