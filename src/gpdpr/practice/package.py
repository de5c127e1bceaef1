"""The extract package: what leaves the practice, and how anyone can check it is intact.

    PACKAGE/
      manifest.json     what the package is (see Manifest in extract.py for its parts)
      manifest.sig      Ed25519 signature over manifest.json's exact bytes, by the practice
      patients.parquet, registrations.parquet, ... one per table of the specification
      deletions.parquet record ids the centre must remove (incremental extracts)

The manifest lists every file with its SHA-256, so the signature covers the whole package. The
collector (and anyone with the practice's public key) checks it with `verify`.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr.errors import UserError
from gpdpr.practice.kit import public_key_id

FORMAT = "gpdpr-extract-package/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DELETIONS = "deletions"
DELETIONS_SCHEMA = pa.schema([("table", pa.string()), ("record_id", pa.string())])


class PackageError(UserError):
    """A package that must be refused: altered, incomplete, or not signed by its practice."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TableWriter:
    """Streams one table's batches into a Parquet file in the package. Only the schema's own
    metadata is written: no key-value metadata that could carry anything else."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        text = [
            f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type)
        ]
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression="zstd",
            use_dictionary=text or False,
            write_statistics=[f.name for f in schema if f.name not in text],
            store_schema=False,  # no key-value metadata at all: the Parquet schema says it all
        )

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


def canonical_json(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def seal(folder: Path, manifest: dict[str, Any], signing: Ed25519PrivateKey) -> None:
    """Write the manifest (with every file's SHA-256 added) and its signature."""
    files = sorted(p for p in folder.iterdir() if p.name not in (MANIFEST, SIGNATURE))
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files
    }
    body = canonical_json(manifest)
    (folder / MANIFEST).write_bytes(body)
    signature = {
        "algorithm": "Ed25519",
        "key_id": public_key_id(signing.public_key()),
        "signature": base64.b64encode(signing.sign(body)).decode(),
    }
    (folder / SIGNATURE).write_bytes(canonical_json(signature))


def verify(folder: Path, public: Ed25519PublicKey) -> dict[str, Any]:
    """The manifest of a package whose signature and every file check out; PackageError naming
    the first thing that does not."""
    name = folder.name
    try:
        body = (folder / MANIFEST).read_bytes()
        signature = orjson.loads((folder / SIGNATURE).read_bytes())
        raw = base64.b64decode(signature["signature"], validate=True)
    except FileNotFoundError as exc:
        raise PackageError(
            f"package {name} has no {Path(str(exc.filename)).name}: refuse it"
        ) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise PackageError(f"package {name}: {SIGNATURE} is damaged; refuse the package") from None
    try:
        public.verify(raw, body)
    except InvalidSignature:
        raise PackageError(
            f"package {name}: the manifest's signature does not verify with the practice's key "
            "(altered, or not signed by that practice); refuse it"
        ) from None
    manifest: dict[str, Any] = orjson.loads(body)
    if manifest.get("format") != FORMAT:
        raise PackageError(f"package {name}: format {manifest.get('format')!r} is not {FORMAT}")
    listed = manifest.get("files", {})
    present = {p.name for p in folder.iterdir()} - {MANIFEST, SIGNATURE}
    if present - set(listed):
        extra = ", ".join(sorted(present - set(listed)))
        raise PackageError(f"package {name}: file(s) {extra} are not in the manifest; refuse it")
    for file_name, about in listed.items():
        path = folder / file_name
        if not path.exists():
            raise PackageError(f"package {name}: {file_name} is missing; refuse it")
        if sha256_file(path) != about["sha256"]:
            raise PackageError(
                f"package {name}: {file_name} does not match its SHA-256 in the manifest "
                "(altered or damaged); refuse it"
            )
    return manifest
