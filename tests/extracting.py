"""Helpers for tests of the practice extractor: keys, running extracts, reading packages."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from hashlib import sha256
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gpdpr.custodian.keys import init, issue_practice
from gpdpr.practice.extract import ExtractRequest, extract
from gpdpr.practice.kit import read_collection_key


class Keys:
    """A custodian key folder, issuing practice kits on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        init(folder)

    def kit(self, ods: str) -> Path:
        kit = self.folder / "practices" / ods
        return kit if kit.exists() else issue_practice(self.folder, ods)


def record_pseudonyms(keys: Keys, ods: str, table: str, ids: Iterable[object]) -> set[str]:
    """The keyed codes record ids leave as, derived here from the documented method (HMAC-SHA256
    of "<ods>:<table>:<id>" under the HKDF-derived record key), not from the extractor's code."""
    key = read_collection_key(keys.folder / "collection.key").key
    info = b"gpdpr pseudonym v1: record"
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
    return {hmac.new(subkey, f"{ods}:{table}:{i}".encode(), sha256).hexdigest() for i in ids}


def run(practice: Path, out: Path, keys: Keys, **kwargs: Any) -> dict[str, Any]:
    return extract(ExtractRequest(practice, out, keys.kit(practice.name), **kwargs))


def tables(package: Path) -> dict[str, pa.Table]:
    return {p.stem: pq.read_table(p) for p in sorted(package.glob("*.parquet"))}


def patient_pseudonym(keys: Keys, nhs_number: str) -> str:
    """A patient's keyed code from their NHS number, by the documented method."""
    key = read_collection_key(keys.folder / "collection.key").key
    info = b"gpdpr pseudonym v1: patient"
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
    return hmac.new(subkey, f"nhs:{nhs_number}".encode(), sha256).hexdigest()
