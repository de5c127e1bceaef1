"""Signed checkpoints in the C2SP formats (c2sp.org/tlog-checkpoint, c2sp.org/signed-note), so
any witness that speaks them can co-sign ours:

    gpdpr.example/transparency-log          the log's origin
    1234                                    its size (entries)
    UMSp7MtSeMbgHIH7t8cQ+sBsYcsvxLwLdCxHR...   its root hash, base64

    — gpdpr.example/transparency-log AbCd...   the log's Ed25519 signature (type 0x01)
    — witness.example/w1 EfGh...               each witness's timestamped cosignature (0x04)

A later checkpoint is trusted only if its tree is provably an extension of the one before (a
consistency proof), which is what each witness checks before it co-signs, so the service cannot
quietly rewrite, fork or roll back what it published without every witness refusing.

The private key lives in HOME/keys/log/ (owner-only, beside the custodian's keys and apart from
data); its verifier key (vkey) is published beside the log as log.pub.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import note
from gpdpr.transparency.note import NoteError, Verifier

ORIGIN = "gpdpr.example/transparency-log"
KEY_FOLDER = "log"  # inside HOME/keys
PRIVATE_KEY = "log.key"
NEXT_KEY = "next.key"  # a key change under way (gpdpr.transparency.rotation)
CHANGES = "changes"  # each key change made final: its seq and entry (to show witnesses)


class CheckpointError(UserError):
    """A checkpoint that is malformed or not signed by the log's key."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    signed: note.Note  # the note: the body above as text, and every signature on it

    @property
    def text(self) -> str:
        return self.signed.text

    @property
    def key(self) -> str:
        """The key ID(s) of the log's signature, hex (the witnesses' are cosignatures)."""
        return ", ".join(s.id.hex() for s in self.signed.signatures if s.name == self.origin)

    @property
    def time(self) -> str:
        """When a witness last co-signed it (the log's own signature carries no time)."""
        stamps = [
            int.from_bytes(s.data[:8], "big")
            for s in self.signed.signatures
            if s.name != self.origin and len(s.data) == 72
        ]
        if not stamps:
            return "not yet witnessed"
        return datetime.fromtimestamp(max(stamps), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_bytes(self) -> bytes:
        return self.signed.render()

    def with_signature(self, signature: note.Signature) -> Checkpoint:
        return Checkpoint(self.origin, self.size, self.root, self.signed.with_signature(signature))


def body(size: int, root: bytes, origin: str = ORIGIN) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def canonical(value: object) -> bytes:
    """The one byte form of a JSON value: keys sorted, no spaces, UTF-8 (the log's entries)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def log_verifier(key: Ed25519PrivateKey, origin: str = ORIGIN) -> Verifier:
    return note.verifier_for(origin, key.public_key())


def sign(key: Ed25519PrivateKey, size: int, root: bytes, origin: str = ORIGIN) -> Checkpoint:
    text = body(size, root, origin)
    return Checkpoint(origin, size, root, note.Note(text, (note.sign(text, origin, key),)))


def parse_body(text: str, where: str) -> tuple[str, int, bytes]:
    """A checkpoint's origin, size and root from its text (extension lines are not used)."""
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise CheckpointError(f"{where} is not a checkpoint: it must be origin, size and root")
    origin, size, root = lines[:3]
    if not size.isdigit() or (size != "0" and size.startswith("0")) or len(size) > 19:
        raise CheckpointError(f"{where}: its size {size[:30]!r} is not a whole number")
    try:
        hashed = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise CheckpointError(f"{where}: its root hash is not base64") from None
    if len(hashed) != 32 or not origin:
        raise CheckpointError(f"{where}: its root is not a SHA-256 hash, or it has no origin")
    return origin, int(size), hashed


def parse(data: bytes, where: str) -> Checkpoint:
    """A checkpoint note, its shape checked (not yet its signatures)."""
    try:
        signed = note.parse(data, where)
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    origin, size, root = parse_body(signed.text, where)
    return Checkpoint(origin, size, root, signed)


def check_signature(checkpoint: Checkpoint, verifier: Verifier, where: str) -> None:
    """The log's own signature, by the pinned key, on a checkpoint of the pinned origin."""
    if checkpoint.origin != verifier.name:
        raise CheckpointError(
            f"{where} is a checkpoint of {checkpoint.origin!r}, not of this log ({verifier.name})"
        )
    try:
        note.verify(checkpoint.signed, verifier, where)
    except NoteError as exc:
        raise CheckpointError(f"{exc}: it is not signed by this log's key") from None


def read_public_key(data: bytes, where: str) -> Verifier:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CheckpointError(f"{where} is not a verifier key") from None
    try:
        found = note.parse_vkey(text, where)
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    if found.kind != note.ED25519:
        raise CheckpointError(f"{where} is not a log's (type 0x01) key")
    return found


def public_file(key: Ed25519PrivateKey) -> bytes:
    return log_verifier(key).vkey.encode() + b"\n"


def load_or_create_key(keys: Path, name: str = PRIVATE_KEY) -> Ed25519PrivateKey:
    """The log's signing key from KEYS/log/log.key (or the next one, `name` NEXT_KEY, during a
    key change), made (owner-only) the first time."""
    folder = keys / KEY_FOLDER
    path = folder / name
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


def settle_key_change(keys: Path, published: Path) -> None:
    """Finish a key change a crash interrupted after it became final: once its change is
    recorded in KEYS/log/changes (its handover logged, gpdpr.transparency.rotation) or the
    next key's public half is already in log.pub, the next key becomes the log's key."""
    folder = keys / KEY_FOLDER
    following = folder / NEXT_KEY
    if not following.exists():
        return
    loaded = serialization.load_pem_private_key(following.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        return
    public = public_file(loaded)
    shown = published.exists() and published.read_bytes() == public
    if not (shown or log_verifier(loaded).vkey in _recorded_changes(folder)):
        return
    if not shown:
        durable.write_file(published, public)
    os.replace(following, folder / PRIVATE_KEY)
    durable.fsync_dir(folder)


def _recorded_changes(folder: Path) -> set[str]:
    """The new keys (vkeys) of the key changes recorded final in FOLDER/changes."""
    path = folder / CHANGES
    if not path.exists():
        return set()
    found = set()
    for line in path.read_bytes().splitlines():
        entry = orjson.loads(orjson.loads(line)["entry"])
        found.add(str(entry["details"]["new_key"]))
    return found
