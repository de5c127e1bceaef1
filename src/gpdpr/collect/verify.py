"""Deciding whether a package can be trusted, before a byte of it reaches the lake.

A package is accepted only if every one of these holds, checked in this order:
  - it is a folder with a readable manifest naming a practice;
  - that practice has a public key registered with the centre (the custodian issued its kit);
  - the manifest's signature verifies with that key, and every file matches its SHA-256;
  - it was made under a specification version the centre accepts, with that version's content;
  - each table file has exactly the rows the manifest says, and the columns the specification
    says, with the right types;
  - every page of every file decodes. A signature proves who made a file, not that its pages
    are sound (a practice's disk or writer can damage them before signing), and one bad page
    found during the load would stop the whole batch; found here, only its package is refused.
The first that fails is the reason it is refused.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.lake.store import read_parquet
from gpdpr.lake.tables import LakeTable
from gpdpr.practice.kit import SIGNING_PUB, read_public_key
from gpdpr.practice.package import DELETIONS_SCHEMA, MANIFEST, PackageError, verify

ODS = re.compile(r"^[A-Z][A-Z0-9]{2,9}$")


@dataclass(frozen=True)
class Package:
    """A verified package: everything the loader needs, read from its signed manifest."""

    folder: Path
    manifest: dict[str, Any]
    package_id: str
    practice: str
    kind: str
    since: datetime | None
    until: datetime
    spec_version: str

    def file(self, table: str) -> Path:
        return self.folder / str(self.manifest["tables"][table]["file"])

    def read(self, table: LakeTable) -> pa.Table:
        """A table's rows, repetitive text kept dictionary-encoded (it is written back so)."""
        dictionary = [c for c in table.repetitive if c in table.data.names]
        return read_parquet(self.file(table.name), dictionary=dictionary)

    def deletions(self) -> pa.Table:
        return pq.read_table(self.folder / str(self.manifest["deletions"]["file"]))

    @property
    def type1_active(self) -> list[str]:
        return list(self.manifest["type1_opt_out"]["active"])

    @property
    def type1_withdrawn(self) -> list[str]:
        return list(self.manifest["type1_opt_out"]["withdrawn"])

    @property
    def type1_registered(self) -> set[str]:
        """Of the people its Type 1 lists name, those the package says are registered with the
        practice at its extract time (none, from an extractor that did not say)."""
        listed = self.manifest["type1_opt_out"].get("registered")
        return {p for p in listed if isinstance(p, str)} if isinstance(listed, list) else set()


def practice_of(folder: Path) -> str:
    """The practice a package says it is from (not yet trusted: it picks the key to check)."""
    if not folder.is_dir():
        raise PackageError(f"{folder} is not a package folder")
    try:
        manifest = orjson.loads((folder / MANIFEST).read_bytes())
        ods = str(manifest["practice"]["ods_code"])
    except FileNotFoundError:
        raise PackageError(f"package {folder.name} has no {MANIFEST}") from None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise PackageError(
            f"package {folder.name}: {MANIFEST} is not a readable manifest"
        ) from None
    if not ODS.match(ods):
        raise PackageError(f"package {folder.name}: {ods!r} is not an ODS practice code")
    return ods


def check(
    folder: Path, keys: Path, accepted: dict[str, str], tables: dict[str, LakeTable]
) -> Package:
    """The package, verified; PackageError with the first reason it cannot be trusted."""
    ods = practice_of(folder)
    public_path = keys / "practices" / ods / SIGNING_PUB
    if not public_path.exists():
        raise PackageError(
            f"package {folder.name} says it is from {ods}, which has no key registered with the "
            "centre: the custodian must issue the practice's kit first"
        )
    try:
        public = read_public_key(public_path)
    except UserError as exc:
        raise PackageError(
            f"package {folder.name}: the registered key is unusable: {exc}"
        ) from None
    manifest = verify(folder, public)
    try:
        package = _read(folder, manifest, ods)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(
            f"package {folder.name}: the manifest is signed but incomplete ({exc}); ask "
            f"{ods} to extract again"
        ) from None
    _check_specification(package, accepted)
    _check_tables(package, tables)
    return package


def _read(folder: Path, manifest: dict[str, Any], ods: str) -> Package:
    window = manifest["window"]
    since = window["since"]
    return Package(
        folder=folder,
        manifest=manifest,
        package_id=str(uuid.UUID(manifest["package_id"])),
        practice=ods,
        kind=_one_of(manifest["kind"], ("historic", "incremental"), "kind"),
        since=None if since is None else _instant(since),
        until=_instant(window["until"]),
        spec_version=str(manifest["specification"]["version"]),
    )


def _one_of(value: object, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _check_specification(package: Package, accepted: dict[str, str]) -> None:
    version = package.spec_version
    sha = package.manifest["specification"].get("sha256")
    if version not in accepted:
        raise PackageError(
            f"package {package.folder.name} was made under specification {version}, which the "
            f"centre does not accept (it accepts {', '.join(sorted(accepted))}); "
            f"{package.practice} must update its extractor and extract again"
        )
    if sha != accepted[version]:
        raise PackageError(
            f"package {package.folder.name} claims specification {version} but with different "
            "content (its hash differs from the released one); refuse it"
        )


def _check_tables(package: Package, tables: dict[str, LakeTable]) -> None:
    name = package.folder.name
    listed = package.manifest["tables"]
    missing = sorted(set(tables) - set(listed))
    if missing:
        raise PackageError(f"package {name} lacks table(s) {', '.join(missing)}")
    unknown = sorted(set(listed) - set(tables))
    if unknown:
        raise PackageError(
            f"package {name} has table(s) {', '.join(unknown)} the centre expects not"
        )
    for table in tables.values():
        _check_file(name, package.file(table.name), table.data, int(listed[table.name]["rows"]))
    deletions = package.folder / str(package.manifest["deletions"]["file"])
    _check_file(name, deletions, DELETIONS_SCHEMA, int(package.manifest["deletions"]["rows"]))


def _check_file(package: str, path: Path, expected: pa.Schema, rows: int) -> None:
    try:
        with pq.ParquetFile(path) as parquet:
            rows_held, schema = parquet.metadata.num_rows, parquet.schema_arrow
    except (OSError, pa.ArrowInvalid) as exc:
        raise PackageError(
            f"package {package}: {path.name} is not a readable Parquet file ({exc}); refuse it"
        ) from None
    if rows_held != rows:
        raise PackageError(
            f"package {package}: {path.name} holds {rows_held:,} rows but the manifest says "
            f"{rows:,}; refuse it"
        )
    got = {f.name: _plain(f.type) for f in schema}
    want = {f.name: f.type for f in expected}
    if got != want:
        wrong = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
        raise PackageError(
            f"package {package}: {path.name} does not have the specification's columns "
            f"(differs at {', '.join(wrong)}); refuse it"
        )
    _decode_whole(package, path)


def _decode_whole(package: str, path: Path) -> None:
    """Decompress and decode every page of every column, one row group at a time (so memory
    stays one row group's); PackageError naming the first that does not decode."""
    try:
        with pq.ParquetFile(path) as parquet:
            for group in range(parquet.num_row_groups):
                try:
                    parquet.read_row_group(group, use_threads=False)
                except (OSError, pa.ArrowException) as exc:
                    raise PackageError(
                        f"package {package}: {path.name} is damaged: row group {group + 1} of "
                        f"{parquet.num_row_groups} does not decode ({exc}); nothing of the "
                        "package was loaded. Ask the practice to extract again"
                    ) from None
    except (OSError, pa.ArrowException) as exc:
        raise PackageError(
            f"package {package}: {path.name} is not a readable Parquet file ({exc}); refuse it"
        ) from None


def _plain(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind
