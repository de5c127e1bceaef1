"""The key custodian's keys: the collection key behind every pseudonym, and each practice's
signing key. Keys live in a key folder of their own, never beside data, and are written readable
by their owner only.

    KEYS/
      custodian.json            what this folder is; the collection key's id
      collection.key            the collection key (32 random bytes)
      practices/Z10001/         a practice's kit (see gpdpr.practice.kit for its files)
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.practice.kit import (
    COLLECTION_KEY,
    KEY_BYTES,
    PRACTICE_FILE,
    SIGNING_KEY,
    SIGNING_PUB,
    CollectionKey,
    key_id,
    public_key_id,
    read_collection_key,
)

CUSTODIAN_FILE = "custodian.json"
LOG_KEY_FOLDER = "log"  # the transparency log's signing key (gpdpr.transparency.checkpoint)
ODS_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{2,9}$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_secret(path: Path, data: bytes) -> None:
    """Create a file only its owner can read, whole or not at all; never overwrite one."""
    durable.write_file(path, data, mode=0o600, replace=False)


def _collection_file(key: bytes, created: str) -> bytes:
    document = {
        "kind": "gpdpr collection key",
        "id": key_id(key),
        "created": created,
        "key": base64.b64encode(key).decode(),
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def init(folder: Path) -> CollectionKey:
    """Create a key folder with a new collection key. Refuses a folder that already has one:
    replacing the collection key would silently change every pseudonym. The key is written last,
    whole: a folder with this module's other files but no key is an init that was cut short,
    and is finished."""
    ours = {LOG_KEY_FOLDER, CUSTODIAN_FILE, "practices"}
    others = (
        [
            p
            for p in folder.iterdir()
            if not (p.name in ours or _partial(p)) or _unfinished_practices(p)
        ]
        if folder.exists()
        else []
    )
    if others and not (folder / COLLECTION_KEY).exists():
        raise UserError(
            f"{folder} already holds other files: a key folder must be a folder of its own, "
            "apart from any data. Choose a new folder"
        )
    if (folder / COLLECTION_KEY).exists():
        durable.sweep(folder / COLLECTION_KEY)
        raise UserError(
            f"{folder} already holds a collection key; a new one would change every pseudonym. "
            "Use another folder for a new scheme"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "practices").mkdir(exist_ok=True)
        os.chmod(folder, 0o700)
        key = secrets.token_bytes(KEY_BYTES)
        created = _now()
        durable.write_file(
            folder / CUSTODIAN_FILE,
            orjson.dumps(
                {"kind": "gpdpr key custodian", "created": created, "collection_key": key_id(key)},
                option=orjson.OPT_INDENT_2,
            )
            + b"\n",
        )
        _write_secret(folder / COLLECTION_KEY, _collection_file(key, created))
    except OSError as exc:
        problem = durable.disk_problem(exc) or exc.strerror or exc
        raise UserError(
            f"cannot create the key folder {folder}: {problem}. No key was made; fix that and "
            "run `gpdpr custodian init` again"
        ) from None
    return CollectionKey(key, key_id(key))


def issue_practice(folder: Path, ods: str) -> Path:
    """Make a practice's kit: a copy of the collection key and a new Ed25519 signing key."""
    ods = ods.strip().upper()
    if not ODS_PATTERN.match(ods):
        raise UserError(f"{ods!r} is not an ODS code (a letter then 2 to 9 letters or digits)")
    collection = read_collection_key(folder / COLLECTION_KEY)
    kit = folder / "practices" / ods
    if kit.exists():
        for leftover in kit.parent.glob(f".{ods}.new-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        raise UserError(
            f"{kit} already exists: {ods} has been issued keys. Revoke them before issuing new ones"
        )
    signing = Ed25519PrivateKey.generate()
    # Made whole aside and renamed into place: a kit cut short by a crash or a full disk is
    # never mistaken for an issued one.
    aside = kit.with_name(f".{ods}.new-{os.getpid()}")
    try:
        for leftover in kit.parent.glob(f".{ods}.new-*"):
            shutil.rmtree(leftover)
        aside.mkdir(parents=True)
        os.chmod(aside, 0o700)
        _write_secret(aside / COLLECTION_KEY, _collection_file(collection.key, _now()))
        _write_secret(
            aside / SIGNING_KEY,
            signing.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        durable.write_file(
            aside / SIGNING_PUB,
            signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        durable.write_file(
            aside / PRACTICE_FILE,
            orjson.dumps(
                {
                    "kind": "gpdpr practice key kit",
                    "ods_code": ods,
                    "issued": _now(),
                    "collection_key": collection.id,
                    "signing_key": public_key_id(signing.public_key()),
                },
                option=orjson.OPT_INDENT_2,
            )
            + b"\n",
        )
        durable.step("practice kit made aside")
        aside.rename(kit)
        durable.fsync_dir(kit.parent)
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        problem = durable.disk_problem(exc) or exc.strerror or exc
        raise UserError(
            f"cannot write the practice kit {kit}: {problem}. No kit was issued; fix that and "
            "issue it again"
        ) from None
    return kit


def _partial(path: Path) -> bool:
    """A file gpdpr.durable was writing when it was cut short."""
    return path.name.startswith(".") and path.name.endswith(".partial")


def _unfinished_practices(path: Path) -> bool:
    """Whether `practices/` holds anything but kits cut short (which an init never makes)."""
    return path.name == "practices" and any(not p.name.startswith(".") for p in path.iterdir())
