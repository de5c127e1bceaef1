"""C2SP signed notes (c2sp.org/signed-note) and Ed25519 cosignatures (c2sp.org/tlog-cosignature).

A note is text ending in a newline, a blank line, then one signature line per signer:

    — <key name> base64(4-byte key ID || signature)

A verifier key ("vkey") is `<name>+<key ID, 8 hex>+base64(<type byte> || public key)`. The key ID
is the first 4 bytes of SHA-256(name || "\\n" || type byte || public key), so a signature line is
matched to its key by name and ID, and lines of unknown keys are ignored as the spec says.

Two signature types are used: 0x01, a plain Ed25519 signature of the note's text (the log's own),
and 0x04, a witness's timestamped cosignature: 8 bytes of POSIX time (big-endian) and an Ed25519
signature of "cosignature/v1\\ntime <t>\\n" followed by the note's text.

This is the format golang.org/x/mod/sumdb/note reads and writes; tests check it against that
package's published examples (tests/fixtures/c2sp/).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr.errors import UserError

ED25519 = 0x01
COSIGNATURE = 0x04
DASH = "— "  # U+2014 EM DASH and a space begin every signature line
MAX_SIGNATURES = 100


class NoteError(UserError):
    """A note, key or signature that is malformed or does not verify."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _valid_name(name: str) -> bool:
    return bool(name) and name.isprintable() and not any(c in name for c in " +\n")


def key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A public key as a vkey names it: who, which signature type, the key."""

    name: str
    kind: int  # ED25519 or COSIGNATURE
    public: bytes  # the raw 32-byte Ed25519 key

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.public)

    @property
    def vkey(self) -> str:
        data = base64.b64encode(bytes([self.kind]) + self.public).decode()
        return f"{self.name}+{self.id.hex()}+{data}"

    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)


def verifier_for(name: str, key: Ed25519PublicKey, kind: int = ED25519) -> Verifier:
    if not _valid_name(name):
        raise NoteError(f"{name!r} cannot name a key: no spaces, '+' or newlines")
    return Verifier(name, kind, raw_public(key))


def parse_vkey(text: str, where: str = "the key") -> Verifier:
    """A vkey, its key ID checked against its name and key."""
    parts = text.strip().split("+", 2)  # base64 may hold '+', a name and an ID never do
    if len(parts) != 3 or not _valid_name(parts[0]):
        raise NoteError(f"{where} is not a verifier key (name+id+key): {text.strip()[:80]!r}")
    name, hexid, data = parts
    try:
        raw = base64.b64decode(data, validate=True)
        wanted = bytes.fromhex(hexid)
    except (binascii.Error, ValueError):
        raise NoteError(f"{where}: its key ID or key is not hex and base64") from None
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE) or len(wanted) != 4:
        raise NoteError(f"{where} is not an Ed25519 key of type 0x01 or 0x04")
    found = Verifier(name, raw[0], raw[1:])
    if found.id != wanted:
        raise NoteError(f"{where}: its key ID {hexid} does not match its name and key")
    return found


def signer_key(text: str) -> tuple[Verifier, Ed25519PrivateKey]:
    """A private key in the Go note package's form, PRIVATE+KEY+<name>+<id>+base64(0x01||seed)."""
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError("not a note private key (PRIVATE+KEY+name+id+key)")
    raw = base64.b64decode(parts[4], validate=True)
    if len(raw) != 33 or raw[0] != ED25519:
        raise NoteError("not an Ed25519 note private key")
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    found = verifier_for(parts[2], private.public_key())
    if found.id.hex() != parts[3]:
        raise NoteError("the private key's ID does not match its name and key")
    return found, private


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    data: bytes  # after the key ID: the signature (with its timestamp, for a cosignature)

    def line(self) -> str:
        return f"{DASH}{self.name} {base64.b64encode(self.id + self.data).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends in a newline
    signatures: tuple[Signature, ...]

    def render(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    def by(self, verifier: Verifier) -> list[Signature]:
        return [s for s in self.signatures if s.name == verifier.name and s.id == verifier.id]

    def with_signature(self, signature: Signature) -> Note:
        kept = tuple(s for s in self.signatures if (s.name, s.id) != (signature.name, signature.id))
        return Note(self.text, (*kept, signature))


def parse(data: bytes, where: str = "the note") -> Note:
    """A signed note's text and signature lines (none verified yet)."""
    try:
        message = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{where} is not UTF-8 text") from None
    if "\r" in message or any(not (c.isprintable() or c == "\n") for c in message):
        raise NoteError(f"{where} holds control characters")
    split = message.rfind("\n\n")
    if split < 0 or not message.endswith("\n"):
        raise NoteError(f"{where} is not a signed note: no blank line before its signatures")
    text, lines = message[: split + 1], message[split + 2 :].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError(f"{where} has no signatures, or too many")
    signatures = []
    for number, line in enumerate(lines, 1):
        if not line.startswith(DASH):
            raise NoteError(f"{where}: signature line {number} does not start with '— '")
        name, _, data64 = line[len(DASH) :].partition(" ")
        try:
            raw = base64.b64decode(data64, validate=True)
        except binascii.Error:
            raise NoteError(f"{where}: signature line {number} is not base64") from None
        if not _valid_name(name) or len(raw) < 5:
            raise NoteError(f"{where}: signature line {number} is malformed")
        signatures.append(Signature(name, raw[:4], raw[4:]))
    return Note(text, tuple(signatures))


def sign(text: str, name: str, key: Ed25519PrivateKey) -> Signature:
    """The log's own kind of signature (0x01) over a note's text."""
    found = verifier_for(name, key.public_key())
    return Signature(name, found.id, key.sign(text.encode()))


def verify(note: Note, verifier: Verifier, where: str = "the note") -> None:
    """Raise NoteError unless `verifier` (type 0x01) signed the note."""
    if verifier.kind != ED25519:
        raise NoteError(f"{verifier.name}'s key is not a note-signing (0x01) key")
    found = note.by(verifier)
    if not found:
        raise NoteError(f"{where} is not signed by {verifier.name}+{verifier.id.hex()}")
    for signature in found:
        try:
            verifier.key().verify(signature.data, note.text.encode())
        except InvalidSignature:
            raise NoteError(
                f"{where}: {verifier.name}'s signature does not match the text: it was "
                "altered after signing, or signed by another key"
            ) from None


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosign(text: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> Signature:
    """A witness's timestamped cosignature (type 0x04) of a checkpoint's text."""
    found = verifier_for(name, key.public_key(), COSIGNATURE)
    signed = key.sign(cosigned_message(text, timestamp))
    return Signature(name, found.id, struct.pack(">Q", timestamp) + signed)


def cosignature_time(note: Note, verifier: Verifier) -> int | None:
    """When `verifier` (type 0x04) cosigned the note's text, if it did and its signature holds."""
    if verifier.kind != COSIGNATURE:
        return None
    for signature in note.by(verifier):
        if len(signature.data) != 72:
            continue
        (timestamp,) = struct.unpack(">Q", signature.data[:8])
        if timestamp >= 1 << 63:
            continue
        try:
            verifier.key().verify(signature.data[8:], cosigned_message(note.text, timestamp))
        except InvalidSignature:
            continue
        return int(timestamp)
    return None
