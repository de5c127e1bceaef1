"""The demo's last step: everything the demo did, published to the log, then verified from the
public files alone, as anyone would."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gpdpr.db import connect, url_for_home
from gpdpr.transparency.publish import log_folder, publish
from gpdpr.transparency.verify import Source, verify


def publish_and_verify(home: Path, say: Callable[[str], None]) -> None:
    engine = connect(url_for_home(home))
    try:
        done = publish(home, engine)
    finally:
        engine.dispose()
    folder = log_folder(home)
    contents = Source(folder=folder).read()
    kept = folder.parent / "kept-checkpoint.json"
    shutil.copyfile(folder / "checkpoint.json", kept)
    checked = verify(Source(folder=folder), kept.read_bytes(), str(kept))
    kinds = Counter(contents.entry(seq)["type"] for seq in range(contents.size))
    say(
        f"{done.appended} entries published to {folder} (entries.jsonl, checkpoint.json, "
        f"log.pub): " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    )
    if done.held:
        say(
            f"{done.held} opt-out changes and pseudonym look-ups of today are published as one "
            "count for the day once it is over (gpdpr log publish), never one by one"
        )
    say(
        f"Verified from the public files alone: {checked.size} entries, root "
        f"{checked.root.hex()}, signed {checked.time}. A copy of that checkpoint is kept in "
        f"{kept}: later, `gpdpr log verify --log-dir {folder} --checkpoint {kept}` proves the "
        f"log only grew; `gpdpr log prove 0 --log-dir {folder}` proves an entry is in it."
    )
