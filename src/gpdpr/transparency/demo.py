"""The demo's last step: everything the demo did, published to the log, then verified from the
public files alone, as anyone would."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gpdpr.db import connect, url_for_home
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, store, witness
from gpdpr.transparency.publish import log_folder, publish
from gpdpr.transparency.verify import Source, verify


def demo_witness(home: Path) -> Path:
    """The demo's own witness, made and enrolled the first time, with a policy of quorum 1. Its
    folder is HOME/witness only because the demo is one machine: a real witness is run by
    someone else, elsewhere. A witness left by an earlier demo, watching another log key, is
    made again."""
    folder = home / "witness"
    keys = home / "keys"
    log_key = cp.log_verifier(cp.load_or_create_key(keys))
    if (folder / witness.KEY).exists():
        watching = witness.watched(witness.open_witness(folder)).get(log_key.name)
        if watching != log_key:
            shutil.rmtree(folder)
    if not (folder / witness.KEY).exists():
        witness.create(folder, "gpdpr.example/demo-witness", [log_key.vkey])
    if folder.resolve() not in [p.resolve() for p in cosigning.enrolled(keys)]:
        cosigning.enrol(keys, folder, quorum=1)
    return folder


def publish_and_verify(home: Path, say: Callable[[str], None]) -> None:
    witnessed_by = demo_witness(home)
    engine = connect(url_for_home(home))
    try:
        done = publish(home, engine)
    finally:
        engine.dispose()
    folder = log_folder(home)
    contents = Source(folder=folder).read()
    kept = folder.parent / "kept-checkpoint"
    shutil.copyfile(folder / store.CHECKPOINT, kept)
    pinned = cosigning.operator_policy(home / "keys")
    assert pinned is not None
    checked = verify(Source(folder=folder), pinned, kept.read_bytes(), str(kept))
    kinds = Counter(contents.entry(seq)["type"] for seq in range(contents.size))
    say(
        f"{done.appended} entries published to {folder} (entries.jsonl, checkpoint, "
        f"log.pub): " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    )
    if done.held:
        say(
            f"{done.held} opt-out changes and pseudonym look-ups of today are published as one "
            "count for the day once it is over (gpdpr log publish), never one by one"
        )
    policy_file = home / "keys" / cp.KEY_FOLDER / cosigning.POLICY
    say(
        f"Verified from the public files alone: {checked.size} entries, root "
        f"{checked.root.hex()}, co-signed by the witness in {witnessed_by} at {checked.time}. "
        f"A copy of that checkpoint is kept in {kept}: later, `gpdpr log verify --log-dir "
        f"{folder} --policy {policy_file} --checkpoint {kept}` proves the log only grew, and "
        f"`gpdpr log prove 0 --log-dir {folder}` proves an entry is in it."
    )
