"""A witness of our own (c2sp.org/tlog-witness): it keeps the last checkpoint it co-signed for
each log it watches, and co-signs a new one only if a consistency proof shows it extends that one.
A smaller tree (a rollback), a different tree of any size (a fork) or a checkpoint not signed by
the log's pinned key is refused, whoever signed it.

Its state is one folder, kept by whoever runs the witness, apart from the log:

    witness.key        its Ed25519 key (PEM, owner-only)
    name               its name (a schema-less URL), the cosignature's key name
    logs               the verifier keys (vkeys) of the logs it watches, one a line
    latest/<id>        the last checkpoint it co-signed for each log (id: the log key's ID, hex)

When the log's key changes (gpdpr.transparency.key_change), `follow` is shown the change's
entry and its inclusion proof in the last checkpoint this witness co-signed: if it holds, the
witness watches the new key instead, its kept checkpoint carried over, and from then on co-signs
only checkpoints the new key signed that extend it. Nothing else ever changes the key it
watches.

`add_checkpoint` takes and answers the tlog-witness add-checkpoint request body ("old N", the
proof's hashes in base64 a line, a blank line, the checkpoint), so the same bytes could travel
over HTTP to any witness that speaks the protocol.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import key_change, note
from gpdpr.transparency.merkle import (
    EMPTY_ROOT,
    ProofError,
    Tree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

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


def follow(witness: Witness, line: bytes, seq: int, proof: list[bytes]) -> note.Verifier:
    """Watch a log's new key, given the key change's entry (its exact bytes) at `seq` and its
    inclusion proof in the last checkpoint this witness co-signed; WitnessRefused unless the
    change is from the key it watches, signed by both keys, and in a tree it co-signed."""
    try:
        entry = orjson.loads(line)
        old = note.parse_vkey(str(entry["details"]["old_key"]), "the change's old key")
    except (orjson.JSONDecodeError, KeyError, TypeError, UserError):
        raise WitnessRefused(400, f"entry {seq} is not a key change") from None
    if not isinstance(entry, dict) or entry.get("seq") != seq or cp.canonical(entry) != line:
        raise WitnessRefused(400, f"the entry shown is not entry {seq} as the log holds it")
    with open(witness.folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        logs = watched(witness)
        log = logs.get(old.name)
        if log is None:
            raise WitnessRefused(404, f"this witness does not watch a log {old.name!r}")
        if log != old:
            raise WitnessRefused(
                403, f"the change at entry {seq} is from a key this witness does not watch"
            )
        kept = latest(witness, log)
        if kept is None or kept.size <= seq:
            raise WitnessRefused(
                422,
                f"this witness has not co-signed a checkpoint that includes entry {seq}: show it "
                "that checkpoint first",
            )
        try:
            verify_inclusion(leaf_hash(line), seq, kept.size, proof, kept.root)
            new = key_change.check_change(entry, seq, log)
        except (ProofError, UserError) as exc:
            raise WitnessRefused(422, f"refused the key change at entry {seq}: {exc}") from None
        (witness.folder / LATEST).mkdir(exist_ok=True)
        durable.write_file(witness.folder / LATEST / new.id.hex(), kept.to_bytes())
        logs[new.name] = new
        durable.write_file(
            witness.folder / LOGS, "".join(f"{v.vkey}\n" for v in logs.values()).encode()
        )
        return new


def kept_size(witness: Witness, origin: str) -> int:
    """The size of the last checkpoint co-signed for the log of this origin (0 if none)."""
    log = watched(witness).get(origin)
    kept = latest(witness, log) if log is not None else None
    return kept.size if kept is not None else 0


def follow_from(witness: Witness, data: bytes, offsets: Sequence[int], tree: Tree) -> list[str]:
    """Follow every key change, from the key this witness watches, in the log's public files
    (its entries' bytes, where each starts, its tree) up to the last checkpoint it co-signed."""
    followed = []
    for origin in list(watched(witness)):
        size = min(kept_size(witness, origin), tree.size)
        found = key_change.find(data, offsets, size)
        for seq in sorted(found.changes):
            line = data[offsets[seq] : offsets[seq + 1] - 1]
            if found.changes[seq]["details"].get("old_key") != watched(witness)[origin].vkey:
                continue
            new = follow(witness, line, seq, tree.inclusion_proof(seq, size))
            followed.append(f"now watching {new.vkey} (the key change at entry {seq})")
    return followed
