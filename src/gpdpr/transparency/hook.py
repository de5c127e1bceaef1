"""The log's part in every central command, arranged by the --home option (gpdpr.home.Home):

- at start-up, the log is verified; a log that does not verify (corrupted, truncated, rewritten,
  its checkpoint altered) stops the command before it does anything, with what was found;
- when the command ends, however it ends, every event it recorded is published and a new
  checkpoint signed. A failure to publish is reported and the command fails: its events stay in
  the record, unpublished, until the log is repaired and the next command publishes them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from gpdpr.errors import UserError
from gpdpr.terminal import fail


def around_command(ctx: typer.Context, home: Path) -> Path:
    if ctx.resilient_parsing:
        return home
    check_at_start(home)
    ctx.call_on_close(lambda: publish_after(home))
    return home


def check_at_start(home: Path) -> None:
    from gpdpr.transparency import store
    from gpdpr.transparency.publish import log_folder

    folder = log_folder(home)
    if not folder.exists():
        return
    try:
        store.read_kept(folder)  # the tree kept, extended: not the whole log hashed again
    except UserError as exc:
        fail(
            f"the transparency log does not verify: {exc}. Nothing was done: the service "
            f"appends to no log it cannot verify. Restore {folder} from a copy (its published "
            "mirror), then check it with `gpdpr log verify`"
        )


def publish_after(home: Path) -> None:
    from gpdpr import db, durable
    from gpdpr.transparency.publish import PUBLISH_ADVICE, publish

    url = db.url_for_home(home)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return  # nothing central was ever recorded here
    try:
        with durable.disk_errors("publishing to the transparency log", PUBLISH_ADVICE):
            engine = db.connect(url)
            try:
                publish(home, engine)
            finally:
                engine.dispose()
    except UserError as exc:
        fail(f"the command's events were kept but not published to the transparency log: {exc}")
