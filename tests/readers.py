"""Test-side readers for synthetic output: written from the formats' definitions, not from the
generator's code, so that a test compares what was written with what should have been."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.supplier import schema


def practice_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def read_columnar(root: Path) -> dict[str, pa.Table]:
    """Every supplier table across all practices, with an `ods` column added."""
    out: dict[str, list[pa.Table]] = {name: [] for name in schema.TABLES}
    for folder in practice_folders(root):
        for name in schema.TABLES:
            table = pq.read_table(folder / f"{name}.parquet")
            out[name].append(table.append_column("ods", pa.array([folder.name] * table.num_rows)))
    return {name: pa.concat_tables(parts) for name, parts in out.items()}


@dataclass
class FhirOutput:
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    bad_lines: list[tuple[str, int]] = field(default_factory=list)  # (file, line number)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.resources.get(kind, [])


def read_fhir(root: Path) -> FhirOutput:
    """All resources, each with `_ods` added; lines that are not JSON are listed, not raised."""
    output = FhirOutput()
    # A million small dicts would otherwise trigger the cycle collector over and over.
    gc.disable()
    try:
        _read_fhir_into(root, output)
    finally:
        gc.enable()
    return output


def _read_fhir_into(root: Path, output: FhirOutput) -> None:
    for folder in practice_folders(root):
        for path in sorted(folder.glob("*.ndjson")):
            for number, line in enumerate(path.read_bytes().splitlines(), start=1):
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    output.bad_lines.append((str(path), number))
                    continue
                resource["_ods"] = folder.name
                output.resources.setdefault(resource["resourceType"], []).append(resource)


def local_id(resource_id: str) -> int:
    """The supplier's local id inside a resource id like 'z10001-c123'."""
    tail = resource_id.rsplit("-", 1)[1]
    return int(tail.lstrip("abcdefghijklmnopqrstuvwxyz"))


def codes_in(value: Any) -> Iterator[tuple[str, str]]:
    """Every (system, code) in a resource, at any depth."""
    if isinstance(value, dict):
        if "system" in value and "code" in value and isinstance(value["code"], str):
            yield value["system"], value["code"]
        for v in value.values():
            yield from codes_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from codes_in(v)
