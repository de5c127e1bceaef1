"""A practice's key kit, as the key custodian issued it: the collection key behind every
pseudonym and the practice's own Ed25519 signing key. The extractor only ever reads keys; it never
makes one up (the custodian's side, gpdpr.custodian.keys, writes them).

    practices/Z10001/         a practice's kit, handed to the practice (or its supplier)
      practice.json           which practice it is for, and the ids of its keys
      collection.key          the collection key (32 random bytes, base64 in JSON)
      signing.key             the practice's Ed25519 private key (PKCS#8 PEM)
      signing.pub             its public key: the custodian keeps this to verify packages

A key's id is a short fingerprint (the first 16 hex digits of SHA-256 of the key), so manifests can
say which key was used without holding anything that helps to guess it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr.errors import UserError

COLLECTION_KEY = "collection.key"
PRACTICE_FILE = "practice.json"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
KEY_BYTES = 32


def key_id(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id(raw)


@dataclass(frozen=True)
class CollectionKey:
    key: bytes
    id: str


@dataclass(frozen=True)
class PracticeKit:
    """What the extractor needs, read from the folder the custodian issued to one practice."""

    folder: Path
    ods_code: str
    collection: CollectionKey
    signing: Ed25519PrivateKey

    @property
    def signing_key_id(self) -> str:
        return public_key_id(self.signing.public_key())


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"no {what} at {path}: the key custodian issues it (gpdpr custodian init / "
            "issue-practice); gpdpr never makes one up"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def read_collection_key(path: Path) -> CollectionKey:
    data = read_bytes(path, "collection key")
    try:
        document = orjson.loads(data)
        key = base64.b64decode(document["key"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} is not a gpdpr collection key file; ask the custodian") from None
    if len(key) != KEY_BYTES or document.get("id") != key_id(key):
        raise UserError(f"{path} is damaged: the key does not match its id; ask the custodian")
    return CollectionKey(key, key_id(key))


def read_public_key(path: Path) -> Ed25519PublicKey:
    data = read_bytes(path, "practice public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UserError(f"{path} is not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return public


def read_kit(folder: Path) -> PracticeKit:
    """A practice's kit, checked: its three files agree with each other."""
    if not folder.is_dir():
        raise UserError(
            f"no practice key kit at {folder}: the key custodian issues one with "
            "`gpdpr custodian issue-practice ODS`"
        )
    try:
        about = orjson.loads(read_bytes(folder / PRACTICE_FILE, "practice kit description"))
        ods = str(about["ods_code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{folder / PRACTICE_FILE} is damaged; ask the custodian") from None
    collection = read_collection_key(folder / COLLECTION_KEY)
    try:
        signing = serialization.load_pem_private_key(
            read_bytes(folder / SIGNING_KEY, "practice signing key"), password=None
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UserError(f"{folder / SIGNING_KEY} is not a PEM private key") from None
    if not isinstance(signing, Ed25519PrivateKey):
        raise UserError(f"{folder / SIGNING_KEY} is not an Ed25519 key")
    if about.get("collection_key") != collection.id:
        raise UserError(
            f"{folder / COLLECTION_KEY} is not the collection key this kit was issued with "
            f"(see {folder / PRACTICE_FILE}); ask the custodian"
        )
    if about.get("signing_key") != public_key_id(signing.public_key()):
        raise UserError(
            f"{folder / SIGNING_KEY} is not the signing key this kit was issued with: packages it "
            "signed could not be verified centrally; ask the custodian"
        )
    return PracticeKit(folder, ods, collection, signing)
