"""Helpers for tests of the central collector: a service home, package copies, lake state."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extracting import Keys
from gpdpr.collect.service import Central
from gpdpr.collect.verify import Package, check
from gpdpr.lake.query import digest
from gpdpr.lake.store import Lake
from gpdpr.lake.tables import data_tables
from gpdpr.practice.kit import SIGNING_KEY, read_private_key
from gpdpr.practice.package import MANIFEST, SIGNATURE, canonical_json, seal
from gpdpr.spec import released_versions, shipped


def central(tmp: Path, keys: Keys) -> Central:
    return Central(tmp / "home", key_folder=keys.folder)


def copies(packages: Path, into: Path, names: list[str] | None = None) -> list[Path]:
    """Fresh copies of packages (collect takes ownership of what it is given)."""
    into.mkdir(parents=True, exist_ok=True)
    chosen = names or sorted(p.name for p in packages.iterdir() if p.is_dir())
    out = []
    for name in chosen:
        target = into / name
        n = 1
        while target.exists():
            n += 1
            target = into / f"{name}-{n}"
        shutil.copytree(packages / name, target)
        out.append(target)
    return out


def state(home: Central) -> tuple[int, dict[str, tuple[int, int]]]:
    """(lake version, rows and content hash of every table)."""
    if not (home.lake_folder / "_lake").exists():
        return -1, {}
    snapshot = Lake.open(home.lake_folder).snapshot()
    return snapshot.version.number, digest(snapshot)


def resign(package: Path, signing_key: Path, change: dict[str, Any] | None = None) -> None:
    """Rewrite a package's manifest (each "a/b/c" path set to its value) and sign it with
    `signing_key`: a package that is properly signed but says something else."""
    manifest = orjson.loads((package / MANIFEST).read_bytes())
    for path, value in (change or {}).items():
        node = manifest
        *parents, last = path.split("/")
        for part in parents:
            node = node[part]
        node[last] = value
    body = canonical_json(manifest)
    (package / MANIFEST).write_bytes(body)
    key = serialization.load_pem_private_key(signing_key.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    signature = orjson.loads((package / SIGNATURE).read_bytes())
    signature["signature"] = base64.b64encode(key.sign(body)).decode()
    (package / SIGNATURE).write_bytes(canonical_json(signature))


# What a rogue or faulty extractor would send: a package's files changed, then the package sealed
# and signed again with its practice's own key (`reseal`), so that all but the change verifies.


def plant(package: Path, table: str, column: str, value: object, rows: int = 1) -> None:
    """The first `rows` rows of the package's `table` given `value` in `column`: as text in a
    text column, in the column's own type in any other (a number, date or time of the right
    type, which only the centre's range can refuse)."""
    path = package / f"{table}.parquet"
    data = pq.read_table(path)
    index = data.schema.get_field_index(column)
    kind = data.schema.field(index).type
    if pa.types.is_string(kind) or pa.types.is_dictionary(kind):
        kind = pa.string()
    values = data[column].combine_chunks().cast(kind).to_pylist()
    values[:rows] = [value] * rows
    field = data.schema.field(index).with_type(kind)
    pq.write_table(data.set_column(index, field, pa.array(values, kind)), path)


def hide(package: Path, table: str, column: str, value: str) -> None:
    """`value` in the dictionary page of the package's `table`'s `column`, though no row uses it."""
    path = package / f"{table}.parquet"
    data = pq.read_table(path)
    encoded = pc.dictionary_encode(data[column].combine_chunks().cast(pa.string()))
    dictionary = pa.concat_arrays([encoded.dictionary, pa.array([value])])
    hidden = pa.DictionaryArray.from_arrays(encoded.indices, dictionary)
    index = data.schema.get_field_index(column)
    pq.write_table(data.set_column(index, pa.field(column, hidden.type), hidden), path)
    read = pq.ParquetFile(path, read_dictionary=[column]).read()[column]
    assert value in read.chunks[0].dictionary.to_pylist() and value not in read.to_pylist()


def reseal(package: Path, keys: Keys, practice: str | None = None) -> None:
    """Seal the package again and sign it with its practice's own key (by default the
    practice the package's folder is named for)."""
    manifest = orjson.loads((package / MANIFEST).read_bytes())
    (package / SIGNATURE).unlink()
    kit = keys.kit(practice or package.name)
    seal(package, manifest, read_private_key(kit / SIGNING_KEY, "key"))


def verified(folder: Path, keys: Keys) -> Package:
    """The package in `folder` as the centre verifies it, before its own checks of content."""
    return check(folder, keys.folder, released_versions(), data_tables(shipped()))


def one_verified(packages: Path, keys: Keys, into: Path) -> Package:
    """One verified package (the first practice's, copied into `into`) to rewrite again and
    again: the centre's checks read what is on disk."""
    [folder] = copies(packages, into, ["Z10001"])
    return verified(folder, keys)
