"""The key custodian's keys. Keys live in a key folder of their own, never beside data, and are
written readable by their owner only. None of the secret ones ever leaves this folder: practices
get their pseudonyms from the custodian's service (gpdpr.custodian.service), obliviously.

    KEYS/
      custodian.json            what this folder is; the ids of its keys
      pseudonym.key             the OPRF key behind every lake pseudonym (RFC 9497 ristretto255)
      project.key               the secret every project's key is derived from: independent of
                                the pseudonym key and of anything a practice or the lake holds
      service.key, service.pub  the service's Ed25519 key: it signs every answer it gives
      practices/Z10001/         a practice's kit (see gpdpr.practice.kit for its files)

Each secret key file is JSON: {"kind", "id", "created", "key": base64}. A pseudonym key's id is
the fingerprint of its public key (skS * G), so it names the key without helping to guess it.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr import durable
from gpdpr.custodian.register import REGISTER, REGISTER_SIG, register_key, revoke
from gpdpr.errors import UserError
from gpdpr.practice import oprf
from gpdpr.practice.kit import (
    CUSTODIAN_PUB,
    KEY_BYTES,
    OLD_COLLECTION_KEY,
    PRACTICE_FILE,
    SIGNING_KEY,
    SIGNING_PUB,
    key_id,
    public_key_id,
    read_bytes,
    read_private_key,
    read_public_key,
)

CUSTODIAN_FILE = "custodian.json"
PSEUDONYM_KEY = "pseudonym.key"
PROJECT_KEY = "project.key"
SERVICE_KEY = "service.key"
SERVICE_PUB = "service.pub"
LOG_KEY_FOLDER = "log"  # the transparency log's signing key (gpdpr.transparency.checkpoint)
ODS_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{2,9}$")
DEFAULT_URL = "http://127.0.0.1:8471"  # `gpdpr custodian serve`'s address unless told another


@dataclass(frozen=True)
class SecretKey:
    key: bytes
    id: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_secret(path: Path, data: bytes) -> None:
    """Create a file only its owner can read, whole or not at all; never overwrite one."""
    durable.write_file(path, data, mode=0o600, replace=False)


def _secret_file(kind: str, key: bytes, key_id_: str, created: str) -> bytes:
    document = {
        "kind": kind,
        "id": key_id_,
        "created": created,
        "key": base64.b64encode(key).decode(),
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def pseudonym_key_id(key: bytes) -> str:
    return key_id(oprf.public_key(key))


def read_secret(path: Path, kind: str) -> SecretKey:
    """A secret key file of this folder, checked against its id."""
    data = read_bytes(path, kind)
    try:
        document = orjson.loads(data)
        key = base64.b64decode(document["key"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} is not a gpdpr {kind} file; ask the custodian") from None
    expected = pseudonym_key_id(key) if path.name == PSEUDONYM_KEY else key_id(key)
    if len(key) != KEY_BYTES or document.get("id") != expected:
        raise UserError(f"{path} is damaged: the key does not match its id; ask the custodian")
    return SecretKey(key, expected)


def read_pseudonym_key(folder: Path) -> SecretKey:
    if not (folder / PSEUDONYM_KEY).exists() and (folder / OLD_COLLECTION_KEY).exists():
        raise UserError(
            f"{folder} holds only the old collection key: pseudonyms are now made with an "
            "oblivious key at the custodian's service. Make a new key folder "
            "(gpdpr custodian init) and re-collect under it, as docs/operators.md describes"
        )
    return read_secret(folder / PSEUDONYM_KEY, "pseudonym key")


def read_service_key(folder: Path) -> Ed25519PrivateKey:
    return read_private_key(folder / SERVICE_KEY, "custodian service key")


def init(folder: Path) -> SecretKey:
    """Create a key folder with a new pseudonym key, project key and service key; returns the
    pseudonym key. Refuses a folder that already has one: replacing it would silently change
    every pseudonym. The pseudonym key is written last, whole: a folder with this module's other
    files but no pseudonym key is an init that was cut short, and is finished."""
    ours = {
        LOG_KEY_FOLDER,
        CUSTODIAN_FILE,
        "practices",
        PROJECT_KEY,
        SERVICE_KEY,
        SERVICE_PUB,
        REGISTER,
        REGISTER_SIG,
    }
    others = (
        [
            p
            for p in folder.iterdir()
            if not (p.name in ours or _partial(p)) or _unfinished_practices(p)
        ]
        if folder.exists()
        else []
    )
    if others and not (folder / PSEUDONYM_KEY).exists():
        raise UserError(
            f"{folder} already holds other files: a key folder must be a folder of its own, "
            "apart from any data. Choose a new folder"
        )
    if (folder / PSEUDONYM_KEY).exists():
        durable.sweep(folder / PSEUDONYM_KEY)
        raise UserError(
            f"{folder} already holds a pseudonym key; a new one would change every pseudonym. "
            "Use another folder for a new scheme"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "practices").mkdir(exist_ok=True)
        os.chmod(folder, 0o700)
        key = oprf.generate_key()
        created = _now()
        if not (folder / SERVICE_KEY).exists():
            service = Ed25519PrivateKey.generate()
            _write_secret(folder / SERVICE_KEY, _pem(service))
        service_public = read_service_key(folder).public_key()
        durable.write_file(folder / SERVICE_PUB, _public_pem(service_public))
        if not (folder / PROJECT_KEY).exists():
            project = secrets.token_bytes(KEY_BYTES)
            _write_secret(
                folder / PROJECT_KEY,
                _secret_file("gpdpr project key", project, key_id(project), created),
            )
        durable.write_file(
            folder / CUSTODIAN_FILE,
            orjson.dumps(
                {
                    "kind": "gpdpr key custodian",
                    "created": created,
                    "pseudonym_key": pseudonym_key_id(key),
                    "service_key": public_key_id(service_public),
                },
                option=orjson.OPT_INDENT_2,
            )
            + b"\n",
        )
        _write_secret(
            folder / PSEUDONYM_KEY,
            _secret_file("gpdpr pseudonym key", key, pseudonym_key_id(key), created),
        )
    except OSError as exc:
        problem = durable.disk_problem(exc) or exc.strerror or exc
        raise UserError(
            f"cannot create the key folder {folder}: {problem}. No key was made; fix that and "
            "run `gpdpr custodian init` again"
        ) from None
    return SecretKey(key, pseudonym_key_id(key))


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issue_practice(folder: Path, ods: str, custodian_url: str = DEFAULT_URL) -> Path:
    """Make a practice's kit: a new Ed25519 signing key and the custodian service's public key
    and address. Nothing in it makes a pseudonym."""
    ods = ods.strip().upper()
    if not ODS_PATTERN.match(ods):
        raise UserError(f"{ods!r} is not an ODS code (a letter then 2 to 9 letters or digits)")
    pseudonym = read_pseudonym_key(folder)
    service = read_public_key(folder / SERVICE_PUB, "custodian service public key")
    _sweep_register(folder)
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
        _write_secret(aside / SIGNING_KEY, _pem(signing))
        durable.write_file(aside / SIGNING_PUB, _public_pem(signing.public_key()))
        durable.write_file(aside / CUSTODIAN_PUB, _public_pem(service))
        durable.write_file(
            aside / PRACTICE_FILE,
            orjson.dumps(
                {
                    "kind": "gpdpr practice key kit",
                    "ods_code": ods,
                    "issued": _now(),
                    "custodian_url": custodian_url,
                    "custodian_key": public_key_id(service),
                    "pseudonym_key": pseudonym.id,
                    "signing_key": public_key_id(signing.public_key()),
                },
                option=orjson.OPT_INDENT_2,
            )
            + b"\n",
        )
        durable.step("practice kit made aside")
        aside.rename(kit)
        durable.fsync_dir(kit.parent)
        register_key(folder, ods, signing.public_key())
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        problem = durable.disk_problem(exc) or exc.strerror or exc
        raise UserError(
            f"cannot write the practice kit {kit}: {problem}. No kit was issued; fix that and "
            "issue it again"
        ) from None
    return kit


def revoke_practice(folder: Path, ods: str) -> int:
    """A practice's kit is lost or stolen: revoke its keys in the register (no package they
    signed is trusted from now on) and set its kit aside, so a new one can be issued. How many
    keys were revoked."""
    ods = ods.strip().upper()
    if not ODS_PATTERN.match(ods):
        raise UserError(f"{ods!r} is not an ODS code (a letter then 2 to 9 letters or digits)")
    _sweep_register(folder)
    count = revoke(folder, ods)
    kit = folder / "practices" / ods
    if kit.exists():
        kit.rename(kit.with_name(f".{ods}.revoked-{datetime.now(UTC):%Y%m%dT%H%M%S}"))
        durable.fsync_dir(kit.parent)
    return count


def _sweep_register(folder: Path) -> None:
    """A register write killed after its copy was made leaves the copy; a re-run that stops
    early (the kit was already in place) would otherwise never reach the write that sweeps it."""
    durable.sweep(folder / REGISTER_SIG)
    durable.sweep(folder / REGISTER)


def _partial(path: Path) -> bool:
    """A file gpdpr.durable was writing when it was cut short."""
    return path.name.startswith(".") and path.name.endswith(".partial")


def _unfinished_practices(path: Path) -> bool:
    """Whether `practices/` holds anything but kits cut short (which an init never makes)."""
    return path.name == "practices" and any(not p.name.startswith(".") for p in path.iterdir())
