"""Signed checkpoints: the log's size, its tree head and when, signed with the log's Ed25519 key.

A checkpoint is a small JSON document anyone can keep; a later checkpoint is trusted only if the
tree it signs is provably an extension of the one kept (a consistency proof), so the service
cannot quietly rewrite what it published. The signature covers the canonical JSON of every field
but `signature` itself.

The private key lives in HOME/keys/log/ (owner-only, beside the custodian's keys and apart from
data); the public key is published beside the log as log.pub.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr import durable
from gpdpr.errors import UserError

LOG_NAME = "gpdpr transparency log"
KEY_FOLDER = "log"  # inside HOME/keys
PRIVATE_KEY = "log.key"


class CheckpointError(UserError):
    """A checkpoint that is malformed or not signed by the log's key."""


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes
    time: str
    key: str  # the id of the key that signed it: SHA-256 of the raw public key, hex
    signature: bytes

    def body(self) -> dict[str, Any]:
        return {
            "log": LOG_NAME,
            "key": self.key,
            "size": self.size,
            "root": self.root.hex(),
            "time": self.time,
        }

    def document(self) -> dict[str, Any]:
        return {**self.body(), "signature": base64.b64encode(self.signature).decode()}

    def to_json(self) -> bytes:
        return orjson.dumps(self.document(), option=orjson.OPT_INDENT_2) + b"\n"


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value: keys sorted, no spaces, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(key: Ed25519PrivateKey, size: int, root: bytes, at: datetime | None = None) -> Checkpoint:
    when = (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    unsigned = Checkpoint(size, root, when, key_id(key.public_key()), b"")
    return Checkpoint(size, root, when, unsigned.key, key.sign(canonical(unsigned.body())))


def parse(data: bytes, where: str) -> Checkpoint:
    """A checkpoint document, its shape checked (not yet its signature)."""
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("log") != LOG_NAME:
            raise ValueError("not a gpdpr log checkpoint")
        size, root, time, key = doc["size"], doc["root"], doc["time"], doc["key"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("its size is not a whole number")
        if not (isinstance(time, str) and isinstance(key, str) and isinstance(root, str)):
            raise ValueError("its time, key and root must be text")
        checkpoint = Checkpoint(
            size, bytes.fromhex(root), time, key, base64.b64decode(doc["signature"], validate=True)
        )
        if len(checkpoint.root) != 32:
            raise ValueError("its root is not a SHA-256 hash")
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where} is not a valid checkpoint: {exc}") from None
    return checkpoint


def check_signature(checkpoint: Checkpoint, public: Ed25519PublicKey, where: str) -> None:
    if checkpoint.key != key_id(public):
        raise CheckpointError(
            f"{where} was signed by key {checkpoint.key[:16]}…, not by this log's key "
            f"{key_id(public)[:16]}…"
        )
    try:
        public.verify(checkpoint.signature, canonical(checkpoint.body()))
    except InvalidSignature:
        raise CheckpointError(
            f"{where}: the signature does not match its contents: it was altered after signing"
        ) from None


def read_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise CheckpointError(f"{where} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{where} is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_or_create_key(keys: Path) -> Ed25519PrivateKey:
    """The log's signing key from KEYS/log/log.key, made (owner-only) the first time."""
    folder = keys / KEY_FOLDER
    path = folder / PRIVATE_KEY
    if path.exists():
        durable.sweep(path)
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Whole or not at all: a key cut short by a crash or a full disk would stop every
            # command. Never over another process's key made meanwhile.
            durable.write_file(path, pem, mode=0o600, replace=False)
        except FileExistsError:
            pass
        except OSError as exc:
            problem = durable.disk_problem(exc) or exc
            raise UserError(
                f"cannot create the log's key in {folder}: {problem}. Nothing was written; "
                "fix that and run the command again"
            ) from None
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the log's key {path}: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 private key")
    return loaded
