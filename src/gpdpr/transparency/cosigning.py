"""The log's side of witnessing: after each checkpoint is signed, every witness the service is
enrolled with is asked to co-sign it (with a consistency proof from the last tree that witness
co-signed), and the cosignatures are published in the checkpoint.

The witnesses are listed, one folder a line, in HOME/keys/log/witnesses (`gpdpr log witness
enrol`); the trust policy they make (log key, witnesses, quorum) is kept beside it as `policy`
and published in HOME/log/policy for convenience: verifiers pin their own copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import note, policy, store
from gpdpr.transparency.witness import (
    Conflict,
    Witness,
    WitnessRefused,
    add_checkpoint,
    follow,
    kept_size,
    open_witness,
    request_body,
)

WITNESSES = "witnesses"  # in HOME/keys/log
POLICY = "policy"  # in HOME/keys/log
CHANGES = cp.CHANGES  # in HOME/keys/log: each key change's seq and entry, to show witnesses
REWITNESS_SECONDS = 3_600  # a checkpoint is co-signed again once its cosignatures are this old


@dataclass
class Gathered:
    checkpoint: cp.Checkpoint
    notes: list[str] = field(default_factory=list)


def enrolled(keys: Path) -> list[Path]:
    path = keys / cp.KEY_FOLDER / WITNESSES
    if not path.exists():
        return []
    return [Path(line.strip()) for line in path.read_text("utf-8").splitlines() if line.strip()]


def enrol(keys: Path, folder: Path, quorum: int) -> policy.Policy:
    """Add a witness (its state folder) to those the log asks, and write the policy anew."""
    from gpdpr.transparency.witness import open_witness

    witness = open_witness(folder)
    known = [p for p in enrolled(keys) if p.resolve() != folder.resolve()]
    folders = [*known, folder.resolve()]
    log_key = cp.log_verifier(cp.load_or_create_key(keys))
    witnesses = tuple(open_witness(f).verifier for f in folders)
    pinned = policy.Policy(log_key, witnesses, quorum)
    policy.parse(pinned.render(), "the new policy")  # the quorum fits the witnesses
    base = keys / cp.KEY_FOLDER
    durable.write_file(base / WITNESSES, "".join(f"{f}\n" for f in folders).encode())
    durable.write_file(base / POLICY, pinned.render().encode())
    del witness
    return pinned


def repin(keys: Path, log_key: note.Verifier) -> None:
    """After a key change: the operator's policy (the portal's) pins the key now in force."""
    pinned = operator_policy(keys)
    if pinned is not None:
        renewed = replace(pinned, log=log_key).render().encode()
        durable.write_file(keys / cp.KEY_FOLDER / POLICY, renewed)


def record_change(keys: Path, seq: int, line: bytes) -> None:
    path = keys / cp.KEY_FOLDER / CHANGES
    known = path.read_bytes() if path.exists() else b""
    record = orjson.dumps({"seq": seq, "entry": line.decode()}) + b"\n"
    if record not in known.splitlines(keepends=True):
        durable.write_file(path, known + record)


def show_changes(writer: store.Writer, keys: Path, witness: Witness) -> None:
    """Show a witness every key change recorded, with its inclusion proof in the last tree the
    witness co-signed, so it can follow the log's key (gpdpr.transparency.witness.follow)."""
    path = keys / cp.KEY_FOLDER / CHANGES
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        change = orjson.loads(line)
        seq, entry = int(change["seq"]), str(change["entry"]).encode()
        size = min(kept_size(witness, cp.ORIGIN), writer.size)
        if seq < size:
            try:
                follow(witness, entry, seq, writer.contents.tree.inclusion_proof(seq, size))
            except WitnessRefused as refused:
                if refused.status != 403:  # 403: it follows a later key already
                    raise


def operator_policy(keys: Path) -> policy.Policy | None:
    path = keys / cp.KEY_FOLDER / POLICY
    return policy.parse(path.read_text("utf-8"), str(path)) if path.exists() else None


def stale(signed: cp.Checkpoint, now: int) -> bool:
    stamps = [
        int.from_bytes(s.data[:8], "big")
        for s in signed.signed.signatures
        if s.name != signed.origin and len(s.data) == 72
    ]
    return not stamps or max(stamps) < now - REWITNESS_SECONDS


def gather(writer: store.Writer, keys: Path, signed: cp.Checkpoint, now: int) -> Gathered:
    """Ask every enrolled witness to co-sign `signed`; a witness that refuses or cannot be
    reached is reported, never fatal: the checkpoint is published with what was gathered."""
    done = Gathered(signed)
    pinned = operator_policy(keys)
    for folder in enrolled(keys):
        try:
            witness = open_witness(folder)
            old, shown = 0, False
            for _ in range(3):  # an answer may give the size it last co-signed, or a key change
                proof = writer.contents.tree.consistency_proof(min(old, signed.size), signed.size)
                try:
                    body = request_body(old, proof, signed.to_bytes())
                    done.checkpoint = done.checkpoint.with_signature(
                        add_checkpoint(witness, body, now)
                    )
                    break
                except Conflict as conflict:
                    old = conflict.size
                except WitnessRefused as refused:
                    if refused.status != 403 or shown:
                        raise
                    shown = True  # it watches an older key: show it the logged changes
                    show_changes(writer, keys, witness)
        except UserError as exc:
            done.notes.append(f"witness {folder} did not co-sign: {exc}")
    if pinned is not None:
        try:
            policy.accept(done.checkpoint, pinned, now, "the new checkpoint")
        except UserError as exc:
            done.notes.append(f"the checkpoint falls short of the log's own policy: {exc}")
        durable.write_file(writer.contents.folder / store.POLICY, pinned.render().encode())
    return done
