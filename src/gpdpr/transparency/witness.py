"""A witness of our own (c2sp.org/tlog-witness): it keeps the last checkpoint it co-signed for
each log it watches, and co-signs a new one only if a consistency proof shows it extends that one.
A smaller tree (a rollback), a different tree of any size (a fork) or a checkpoint not signed by
the log's pinned key is refused, whoever signed it.

Its state is one folder, kept by whoever runs the witness, apart from the log:

    witness.key        its Ed25519 key (PEM, owner-only)
    name               its name (a schema-less URL), the cosignature's key name
    logs               the verifier keys (vkeys) of the logs it watches, one a line
    latest/<id>        the last checkpoint it co-signed for each log (id: the log key's ID, hex)

`add_checkpoint` takes and answers the tlog-witness add-checkpoint request body ("old N", the
proof's hashes in base64 a line, a blank line, the checkpoint), so the same bytes could travel
over HTTP to any witness that speaks the protocol.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import note
from gpdpr.transparency.merkle import EMPTY_ROOT, ProofError, verify_consistency

KEY, NAME, LOGS, LATEST, LOCK = "witness.key", "name", "logs", "latest", ".lock"


class WitnessRefused(UserError):
    """The witness will not co-sign: `status` is the tlog-witness HTTP status it would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Conflict(WitnessRefused):
    """The old size given is not the size the witness last co-signed (HTTP 409)."""

    def __init__(self, size: int) -> None:
        super().__init__(409, f"the witness last co-signed a tree of {size} entries")
        self.size = size


@dataclass(frozen=True)
class Witness:
    folder: Path
    name: str
    key: Ed25519PrivateKey

    @property
    def verifier(self) -> note.Verifier:
        return note.verifier_for(self.name, self.key.public_key(), note.COSIGNATURE)


def create(folder: Path, name: str, logs: list[str]) -> Witness:
    """A new witness watching the logs with these vkeys."""
    for vkey in logs:
        cp.read_public_key(vkey.encode(), "the log's key")
    note.verifier_for(name, Ed25519PrivateKey.generate().public_key())  # the name is valid
    if (folder / KEY).exists():
        raise UserError(f"{folder} already holds a witness; give another folder")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    durable.write_file(folder / KEY, pem, mode=0o600, replace=False)
    durable.write_file(folder / NAME, name.encode() + b"\n")
    durable.write_file(folder / LOGS, "".join(v.strip() + "\n" for v in logs).encode())
    return Witness(folder, name, key)


def open_witness(folder: Path) -> Witness:
    try:
        key = serialization.load_pem_private_key((folder / KEY).read_bytes(), password=None)
        name = (folder / NAME).read_text("utf-8").strip()
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder} is not a witness's folder: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{folder / KEY} is not an Ed25519 key")
    return Witness(folder, name, key)


def watched(witness: Witness) -> dict[str, note.Verifier]:
    """The logs the witness watches, by origin."""
    found = {}
    for n, line in enumerate((witness.folder / LOGS).read_text("utf-8").splitlines(), 1):
        if line.strip():
            key = cp.read_public_key(line.encode(), f"{witness.folder / LOGS}, line {n}")
            found[key.name] = key
    return found


def latest(witness: Witness, log: note.Verifier) -> cp.Checkpoint | None:
    path = witness.folder / LATEST / log.id.hex()
    return cp.parse(path.read_bytes(), str(path)) if path.exists() else None


def request_body(old_size: int, proof: list[bytes], checkpoint: bytes) -> bytes:
    lines = [f"old {old_size}", *(base64.b64encode(p).decode() for p in proof)]
    return ("\n".join(lines) + "\n\n").encode() + checkpoint


def _parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    head, sep, checkpoint = body.partition(b"\n\n")
    lines = head.decode("ascii", "replace").split("\n")
    old = lines[0].removeprefix("old ")
    if not sep or not lines[0].startswith("old ") or not old.isdigit():
        raise WitnessRefused(400, "the request does not start with `old N` and end its proof")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except binascii.Error:
        raise WitnessRefused(400, "a consistency proof line is not base64") from None
    if any(len(p) != 32 for p in proof) or len(proof) > 64:
        raise WitnessRefused(400, "the consistency proof is not a list of SHA-256 hashes")
    return int(old), proof, checkpoint


def add_checkpoint(witness: Witness, body: bytes, now: int) -> note.Signature:
    """Co-sign the checkpoint in a tlog-witness request if it extends the last one co-signed;
    WitnessRefused (Conflict for a stale old size) if not. The new checkpoint is kept before
    the cosignature is given, under a lock, so two requests cannot both extend the same one."""
    old_size, proof, data = _parse_request(body)
    try:
        checkpoint = cp.parse(data, "the checkpoint")
    except UserError as exc:
        raise WitnessRefused(400, str(exc)) from None
    log = watched(witness).get(checkpoint.origin)
    if log is None:
        raise WitnessRefused(404, f"this witness does not watch a log {checkpoint.origin!r}")
    try:
        cp.check_signature(checkpoint, log, "the checkpoint")
    except UserError as exc:
        raise WitnessRefused(403, str(exc)) from None
    if old_size > checkpoint.size:
        raise WitnessRefused(400, f"old size {old_size} is beyond the checkpoint's size")
    with open(witness.folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = latest(witness, log)
        kept_size = kept.size if kept else 0
        if old_size != kept_size:
            raise Conflict(kept_size)
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            raise WitnessRefused(422, "a checkpoint of size 0 must have the empty tree's root")
        if kept is None:
            if proof:
                raise WitnessRefused(422, "no proof is needed from the empty tree")
        else:
            try:
                verify_consistency(kept.size, checkpoint.size, kept.root, checkpoint.root, proof)
            except ProofError as exc:
                raise WitnessRefused(
                    422,
                    f"refused: {exc}. The log forked or was rewritten since this witness "
                    f"co-signed its tree of {kept.size} entries",
                ) from None
        signature = note.cosign(checkpoint.text, witness.name, witness.key, now)
        (witness.folder / LATEST).mkdir(exist_ok=True)
        durable.write_file(witness.folder / LATEST / log.id.hex(), data)
        return signature
