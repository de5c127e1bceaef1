"""`gpdpr log rotate-key`: the service changes its log key the one way verifiers and witnesses
accept (gpdpr.transparency.key_change), under the publish lock:

1. the next key is made (HOME/keys/log/next.key) and a change entry appended, signed by both;
2. the log is signed with the old key and co-signed; unless a quorum of the operator's pinned
   witnesses co-signs, nothing is switched (the change waits; run the command again);
3. that witnessed checkpoint is appended as the handover entry, and the log signed by both keys;
4. the change is recorded as final (HOME/keys/log/changes) and the operator's policy pins the
   new key; log.pub becomes the new key, then next.key becomes log.key (a crash anywhere in
   this step is finished at the next start: gpdpr.transparency.checkpoint.settle_key_change);
5. the witnesses are shown the change and follow.

Each step can be run again: a change or handover already in the log is found, not written twice.
The old private key is removed: a key that no longer signs anything must not lie about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, key_change, policy, store
from gpdpr.transparency.note import Verifier
from gpdpr.transparency.publish import locked, log_folder
from gpdpr.transparency.witness import open_witness


@dataclass
class Rotated:
    change: int  # the change entry's seq
    handover: int
    old: Verifier
    new: Verifier
    checkpoint: cp.Checkpoint
    notes: list[str] = field(default_factory=list)


def rotate(home: Path, now: int | None = None, keys: Path | None = None) -> Rotated:
    keys = keys or home / "keys"
    moment = int(time.time()) if now is None else now
    stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    folder = log_folder(home)
    if not (folder / store.CHECKPOINT).exists():
        raise key_change.RotationError(f"there is no log at {folder}: check --home")
    with locked(home):
        writer = store.open_verified(folder, keys)
        pinned = cosigning.operator_policy(keys)
        if pinned is None or not cosigning.witnessed(keys):
            raise key_change.RotationError(
                "no witness is enrolled: a key change must be witnessed, or no verifier will "
                "accept the new key. Enrol witnesses (`gpdpr log witness enrol`) first"
            )
        old = writer.key
        new = cp.load_or_create_key(keys, cp.NEXT_KEY)
        whole = store.read(folder)  # the entries, to find a change an earlier run began
        found = key_change.find(whole.data, whole.offsets, whole.size)
        wanted = cp.log_verifier(new).vkey
        begun = [s for s, e in found.changes.items() if e["details"].get("new_key") == wanted]
        if begun:
            change, line = begun[-1], whole.line(begun[-1])
        else:
            change = writer.size
            (line,) = writer.append([key_change.change_entry(old, new, change, stamp)])
        notes: list[str] = []
        if change in found.handovers:
            handover = found.handovers[change][0]
        else:
            gathered = cosigning.gather(writer, keys, writer.sign(), moment)
            writer.publish(gathered.checkpoint)
            notes.extend(gathered.notes)
            try:
                policy.accept(gathered.checkpoint, pinned, moment, "the checkpoint of the change")
            except UserError as exc:
                raise key_change.RotationError(
                    f"{exc}. The change is in the log (entry {change}) but the key is "
                    "unchanged: run `gpdpr log rotate-key` again once the witnesses answer"
                ) from None
            handover = writer.size
            writer.append([key_change.handover_entry(change, gathered.checkpoint, stamp)])
        both = key_change.signed_by_both(old, new, writer.size, writer.contents.tree.root())
        writer.publish(both)  # a reader holding either log.pub verifies it
        new_key = cp.log_verifier(new)
        # Final from here: whatever starts next finishes the switch (settle_key_change).
        cosigning.record_change(keys, change, line)
        cosigning.repin(keys, new_key)
        durable.step("key change recorded")
        durable.write_file(folder / store.PUBLIC_KEY, cp.public_file(new))
        durable.step("new log key published")
        cp.settle_key_change(keys, folder / store.PUBLIC_KEY)
        writer.key = new
        for witness_folder in cosigning.enrolled(keys):
            try:
                cosigning.show_changes(writer, keys, open_witness(witness_folder))
            except UserError as exc:
                notes.append(f"witness {witness_folder} did not follow the key change: {exc}")
        gathered = cosigning.gather(writer, keys, both, moment)
        signed = writer.publish(gathered.checkpoint)
        notes.extend(gathered.notes)
        return Rotated(change, handover, cp.log_verifier(old), new_key, signed, notes)
