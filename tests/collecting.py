"""Helpers for tests of the central collector: a service home, package copies, lake state."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extracting import Keys
from gpdpr.collect.service import Central
from gpdpr.lake.query import digest
from gpdpr.lake.store import Lake
from gpdpr.practice.package import MANIFEST, SIGNATURE, canonical_json


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
