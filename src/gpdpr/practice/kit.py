"""A practice's key kit, as the key custodian issued it: the practice's own Ed25519 signing key
and the custodian's public key. No key that makes a pseudonym is in it: pseudonyms come from the
custodian's service through an oblivious function (gpdpr.practice.custodian_client), so a lost kit
re-identifies no one. The extractor only ever reads keys; it never makes one up (the custodian's
side, gpdpr.custodian.keys, writes them).

    practices/Z10001/         a practice's kit, handed to the practice (or its supplier)
      practice.json           which practice it is for, the custodian's address, the keys' ids
      signing.key             the practice's Ed25519 private key (PKCS#8 PEM)
      signing.pub             its public key: the custodian keeps this to verify packages
      custodian.pub           the custodian service's Ed25519 public key: its answers are signed

A key's id is a short fingerprint (the first 16 hex digits of SHA-256 of the key), so manifests can
say which key was used without holding anything that helps to guess it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr.errors import UserError

PRACTICE_FILE = "practice.json"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
CUSTODIAN_PUB = "custodian.pub"
OLD_COLLECTION_KEY = "collection.key"  # the scheme before the custodian's service (see MIGRATION)
KEY_BYTES = 32

MIGRATION = (
    "kits issued before the custodian's pseudonym service held the collection key, which let "
    "anyone holding one re-identify everyone; such a kit is refused. Destroy it (every copy) and "
    "ask the custodian for a new one (gpdpr custodian issue-practice)"
)


def key_id(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id(raw)


@dataclass(frozen=True)
class PracticeKit:
    """What the extractor needs, read from the folder the custodian issued to one practice."""

    folder: Path
    ods_code: str
    signing: Ed25519PrivateKey
    custodian: Ed25519PublicKey
    custodian_url: str
    pseudonym_key_id: str  # the id of the custodian's pseudonym key (not the key)

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


def read_public_key(path: Path, what: str = "practice public key") -> Ed25519PublicKey:
    data = read_bytes(path, what)
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UserError(f"{path} is not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return public


def read_private_key(path: Path, what: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_bytes(path, what), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UserError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 key")
    return key


def read_kit(folder: Path) -> PracticeKit:
    """A practice's kit, checked: its files agree with each other, and it is not an old kit
    holding the collection key."""
    if not folder.is_dir():
        raise UserError(
            f"no practice key kit at {folder}: the key custodian issues one with "
            "`gpdpr custodian issue-practice ODS`"
        )
    if (folder / OLD_COLLECTION_KEY).exists():
        raise UserError(f"{folder} is an old key kit: {MIGRATION}")
    try:
        about = orjson.loads(read_bytes(folder / PRACTICE_FILE, "practice kit description"))
        ods = str(about["ods_code"])
        url = str(about["custodian_url"])
        pseudonym_key = str(about["pseudonym_key"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{folder / PRACTICE_FILE} is damaged; ask the custodian") from None
    signing = read_private_key(folder / SIGNING_KEY, "practice signing key")
    custodian = read_public_key(folder / CUSTODIAN_PUB, "custodian public key")
    if about.get("signing_key") != public_key_id(signing.public_key()):
        raise UserError(
            f"{folder / SIGNING_KEY} is not the signing key this kit was issued with: packages it "
            "signed could not be verified centrally; ask the custodian"
        )
    if about.get("custodian_key") != public_key_id(custodian):
        raise UserError(
            f"{folder / CUSTODIAN_PUB} is not the custodian key this kit was issued with; ask "
            "the custodian"
        )
    return PracticeKit(folder, ods, signing, custodian, url, pseudonym_key)
