"""A change of the log's key, as the log itself records it, so that a verifier pinning the old
key can follow it and nobody can pass off a log re-signed with a key of their own.

Two entries make a change, both in the log:

    log.key_change    the old key's vkey, the new key's vkey, and a statement (a C2SP signed
                      note naming the origin, the entry's seq and both keys) signed by the old key
                      and by the new one (so the new key's holder agreed to it)
    log.key_handover  a checkpoint that includes the change, signed by the old key and co-signed
                      by the witnesses (their cosignatures, copied into the log)

A new key is in force for checkpoints after its handover entry; the checkpoint that first
includes the handover is signed by both keys, so a reader holding either log.pub verifies it
while the published key is switched. A verifier that kept nothing walks the changes from the key
it pinned (`in_force`): each must name the key then in force as its old key, carry both
signatures, and have a handover co-signed by a quorum of the pinned witnesses; only then does the
next key count. A log re-signed wholesale with a new key has no such chain, and is refused.

Witnesses follow the same way (gpdpr.transparency.witness.follow): shown the change entry and its
inclusion proof in the last checkpoint they co-signed (old key), they watch the new key instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import note
from gpdpr.transparency.note import NoteError, Verifier

CHANGE = "log.key_change"
HANDOVER = "log.key_handover"
ROLE = "log operator"
_MARKER = b'"type":"log.key_'  # canonical JSON: how a change's top-level type is written
CLOCK_SKEW = 300


class KeyChangeError(cp.CheckpointError):
    """A key change the log records that does not hold."""


def statement_text(origin: str, seq: int, old: Verifier, new: Verifier) -> str:
    return f"{origin} key change\nentry {seq}\nold {old.vkey}\nnew {new.vkey}\n"


def change_entry(
    old: Ed25519PrivateKey, new: Ed25519PrivateKey, seq: int, time: str
) -> dict[str, Any]:
    """The entry that records the change, to be appended at `seq`."""
    old_v, new_v = cp.log_verifier(old), cp.log_verifier(new)
    text = statement_text(old_v.name, seq, old_v, new_v)
    signed = note.Note(text, (note.sign(text, old_v.name, old), note.sign(text, new_v.name, new)))
    return {
        "type": CHANGE,
        "time": time,
        "actor": {"role": ROLE, "organisation": None},
        "details": {
            "old_key": old_v.vkey,
            "new_key": new_v.vkey,
            "statement": signed.render().decode(),
        },
    }


def handover_entry(change: int, witnessed: cp.Checkpoint, time: str) -> dict[str, Any]:
    return {
        "type": HANDOVER,
        "time": time,
        "actor": {"role": ROLE, "organisation": None},
        "details": {"change": change, "checkpoint": witnessed.to_bytes().decode()},
    }


def check_change(entry: dict[str, Any], seq: int, in_force: Verifier) -> Verifier:
    """The new key an entry at `seq` hands over to, if it is a well-formed change from the key in
    force, signed by both keys; KeyChangeError if not."""
    where = f"the key change at entry {seq}"
    details = entry.get("details")
    if entry.get("type") != CHANGE or not isinstance(details, dict):
        raise KeyChangeError(f"entry {seq} is not a key change")
    if set(details) != {"old_key", "new_key", "statement"}:
        raise KeyChangeError(f"{where} does not hold exactly old_key, new_key and statement")
    old_key, new_key, statement = details["old_key"], details["new_key"], details["statement"]
    if not all(isinstance(v, str) for v in (old_key, new_key, statement)):
        raise KeyChangeError(f"{where}: its keys and statement must be text")
    if old_key != in_force.vkey:
        raise KeyChangeError(
            f"{where} is from the key {old_key[:60]}, not the key in force "
            f"({in_force.vkey[:60]}): it was not made by the log's key"
        )
    try:
        new = note.parse_vkey(new_key, f"{where}'s new key")
        signed = note.parse(statement.encode(), f"{where}'s statement")
        if new.kind != note.ED25519 or new.name != in_force.name or new == in_force:
            raise KeyChangeError(f"{where}: its new key is not another key of {in_force.name}")
        if signed.text != statement_text(in_force.name, seq, in_force, new):
            raise KeyChangeError(f"{where}: its statement does not name this entry and both keys")
        note.verify(signed, in_force, f"{where}'s statement")
        note.verify(signed, new, f"{where}'s statement")
    except NoteError as exc:
        raise KeyChangeError(f"{exc}: the change is not signed by the old and new keys") from None
    return new


def check_handover(
    entry: dict[str, Any],
    seq: int,
    change: int,
    in_force: Verifier,
    witnesses: tuple[Verifier, ...],
    quorum: int,
    root_at: Callable[[int], bytes],
    now: int,
) -> None:
    """A handover at `seq` for the change at `change`: a checkpoint that includes the change,
    is no later than this entry, matches the log (`root_at(size)`), is signed by the old key and
    co-signed by `quorum` of `witnesses` (at any time before now: it records the change's day)."""
    where = f"the key handover at entry {seq}"
    details = entry.get("details")
    text = details.get("checkpoint") if isinstance(details, dict) else None
    if not isinstance(text, str):
        raise KeyChangeError(f"{where} holds no checkpoint")
    handed = cp.parse(text.encode(), where)
    cp.check_signature(handed, in_force, where)
    if not change < handed.size <= seq:
        raise KeyChangeError(
            f"{where}: its checkpoint of {handed.size} entries does not include the change at "
            f"entry {change} and precede the handover"
        )
    if root_at(handed.size) != handed.root:
        raise KeyChangeError(f"{where}: its checkpoint is not of this log (another root)")
    cosigned = [
        w.name
        for w in witnesses
        if (t := note.cosignature_time(handed.signed, w)) is not None and t <= now + CLOCK_SKEW
    ]
    if len(cosigned) < quorum:
        raise KeyChangeError(
            f"{where} is co-signed by {len(cosigned)} of the pinned witnesses and {quorum} are "
            "required: the key change was not witnessed, so the new key is not trusted"
        )


@dataclass(frozen=True)
class Found:
    """The key-change entries of a log: changes and handovers by seq."""

    changes: dict[int, dict[str, Any]]
    handovers: dict[int, tuple[int, dict[str, Any]]]  # change seq -> (seq, entry)


def find(data: bytes, offsets: Sequence[int], size: int) -> Found:
    """Every change and handover among the first `size` entries (the bytes of entries.jsonl
    and where each entry starts), found without parsing every entry."""
    changes: dict[int, dict[str, Any]] = {}
    handovers: dict[int, tuple[int, dict[str, Any]]] = {}
    if not data or size <= 0:
        return Found(changes, handovers)
    end = offsets[size] if size < len(offsets) else len(data)
    at = data.find(_MARKER, 0, end)
    while at >= 0:
        seq = bisect.bisect_right(offsets, at) - 1
        entry = orjson.loads(data[offsets[seq] : offsets[seq + 1] - 1])
        kind = entry.get("type")
        if kind == CHANGE:
            changes[seq] = entry
        elif kind == HANDOVER:
            change = entry.get("details", {}).get("change")
            if isinstance(change, int) and change not in handovers:
                handovers[change] = (seq, entry)
        at = data.find(_MARKER, offsets[seq + 1], end)
    return Found(changes, handovers)


def in_force(
    found: Found,
    pinned: Verifier,
    witnesses: tuple[Verifier, ...],
    quorum: int,
    root_at: Callable[[int], bytes],
    now: int,
) -> list[Verifier]:
    """The keys the log has had since `pinned`, oldest first: the last is the one in force.

    The walk starts at the pinned key (after the change that brought it in, if the verifier
    pinned a later key). Each change must be from the key then in force, signed by both keys;
    it takes effect only with a handover co-signed by a quorum of the pinned witnesses. A
    change from another key, or a handover that falls short, is refused outright: the honest
    service never writes either."""
    keys = [pinned]
    order = sorted(found.changes)
    details = {s: found.changes[s].get("details") or {} for s in order}
    brought = [s for s in order if details[s].get("new_key") == pinned.vkey]
    if brought:
        order = [s for s in order if s > brought[-1]]
    for seq in order:
        new = check_change(found.changes[seq], seq, keys[-1])
        handover = found.handovers.get(seq)
        if handover is None:
            continue  # not (yet) witnessed: the old key stays in force
        check_handover(handover[1], handover[0], seq, keys[-1], witnesses, quorum, root_at, now)
        keys.append(new)
    return keys


def signed_by_both(
    old: Ed25519PrivateKey, new: Ed25519PrivateKey, size: int, root: bytes
) -> cp.Checkpoint:
    """The checkpoint that first includes a handover: either log.pub verifies it."""
    text = cp.body(size, root)
    signatures = (note.sign(text, cp.ORIGIN, old), note.sign(text, cp.ORIGIN, new))
    return cp.Checkpoint(cp.ORIGIN, size, root, note.Note(text, signatures))


class RotationError(UserError):
    """A key change the service could not complete (nothing is switched)."""
