"""Helpers for tests of the practice extractor: keys, running extracts, reading packages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.custodian.keys import init, issue_practice
from gpdpr.practice.extract import ExtractRequest, extract


class Keys:
    """A custodian key folder, issuing practice kits on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        init(folder)

    def kit(self, ods: str) -> Path:
        kit = self.folder / "practices" / ods
        return kit if kit.exists() else issue_practice(self.folder, ods)


def run(practice: Path, out: Path, keys: Keys, **kwargs: Any) -> dict[str, Any]:
    return extract(ExtractRequest(practice, out, keys.kit(practice.name), **kwargs))


def tables(package: Path) -> dict[str, pa.Table]:
    return {p.stem: pq.read_table(p) for p in sorted(package.glob("*.parquet"))}


_FHIR_ID_PREFIX = re.compile(r"^[a-z0-9]+-[a-z]+")


def local_record_id(record_id: str) -> str:
    """'z10001-c123' (a synthetic FHIR id) -> '123', the supplier's own number for it."""
    return _FHIR_ID_PREFIX.sub("", record_id)
