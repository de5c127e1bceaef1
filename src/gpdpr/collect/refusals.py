"""Refusing a package: moving it aside with its reason and recording `package.refused`, so that a
run cut at any point (SIGKILL, a full disk) leaves the refusal invisible or completed by the next
`collect`, never a package in rejected/ without its event, nor an event twice.

A refusal is staged in a hidden folder of rejected/ (`.refusing-TOKEN/`): first `refusal.json`
(what was refused, why, from where), then the package itself moved in as `item/` with its reason
written inside. The staged item is the committed state: once it is whole, the refusal happened and
is recorded, with TOKEN in the event's details (the log does not publish it), in a transaction
that first looks for TOKEN, so a re-run never records it twice. Only then is `item/` renamed into
rejected/ under the package's name, in one step, as only its reason and its manifest's summary
(gpdpr.collect.refused): the package itself is deleted. A stage without its whole item is
discarded: the package never left where it was, and the next run checks it again.

A package the service does not own (given from outside its home, see gpdpr.collect.service) is
never moved nor deleted: its staged item is its summary and reason alone, made from it where it
is, and the refusal goes on from there as for any other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr import durable
from gpdpr.collect.refused import REFUSED_NOTE, delete, keep_reason
from gpdpr.db.events import record
from gpdpr.db.models import Event

ACTOR = "collector"
STAGE = ".refusing-"
INTENT = "refusal.json"
ITEM = "item"
KEPT = "kept"  # what is kept of it: its reason and its manifest's summary
PARTIAL = ".item.partial"


@dataclass
class Refused:
    folder: Path
    reason: str
    moved_to: Path | None  # where its reason is kept
    left: bool = False  # not the service's: left where it was, untouched


def refuse(rejected: Path, engine: sa.Engine, refused: list[Refused]) -> None:
    """Move each refused package into `rejected` with its reason and record it (see the module's
    docstring); sets each one's `moved_to`. Refusals an earlier run left staged are finished
    first."""
    with _locked(rejected):
        _finish(rejected, engine)
        for r in refused:
            stage = _stage(rejected, r)
            if stage is not None:
                r.moved_to = _complete(rejected, engine, stage)


def finish(rejected: Path, engine: Callable[[], sa.Engine]) -> int:
    """Complete or discard what a killed run left staged in `rejected`; how many refusals were
    completed. Cheap when nothing is staged: `engine` is not called."""
    if not rejected.is_dir() or not any(rejected.glob(f"{STAGE}*")):
        return 0
    made = engine()
    try:
        with _locked(rejected):
            return _finish(rejected, made)
    finally:
        made.dispose()


@contextmanager
def _locked(rejected: Path) -> Iterator[None]:
    """One process at a time stages and completes refusals (a blocking lock: it is brief)."""
    rejected.mkdir(parents=True, exist_ok=True)
    with (rejected / ".lock").open("a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stage(rejected: Path, refused: Refused) -> Path | None:
    """Stage one refusal; its stage, or None when the package is no longer there."""
    source = refused.folder
    if not source.exists():
        return None
    token = uuid.uuid4().hex
    stage = rejected / f"{STAGE}{token}"
    stage.mkdir()
    durable.fsync_dir(rejected)
    intent = {
        "token": token,
        "package": source.name,
        "reason": refused.reason,
        "source": str(source.absolute()),
        "left": "yes" if refused.left else "",
    }
    durable.write_file(stage / INTENT, orjson.dumps(intent))
    durable.step("refusal staged")
    partial = stage / PARTIAL
    if refused.left:
        keep_reason(source, partial, refused.reason)
    elif source.is_dir():
        try:
            # The same file system: one rename, and the package has left the inbox whole.
            os.rename(source, partial)
        except OSError:
            shutil.copytree(source, partial, symlinks=True)
    else:
        partial.mkdir()
        shutil.copy2(source, partial / source.name)
    if not refused.left:
        durable.write_file(partial / REFUSED_NOTE, (refused.reason + "\n").encode())
    os.rename(partial, stage / ITEM)
    durable.fsync_dir(stage)
    durable.step("refused package staged")
    _drop_source(stage, intent)
    return stage


def _finish(rejected: Path, engine: sa.Engine) -> int:
    done = 0
    for stage in sorted(rejected.glob(f"{STAGE}*")):
        if _complete(rejected, engine, stage) is not None:
            done += 1
    return done


def _complete(rejected: Path, engine: sa.Engine, stage: Path) -> Path | None:
    """Record a staged refusal (once), keep its reason and manifest summary in `rejected` and
    delete the package (gpdpr.collect.refused: its rows would outlive an erasure); None when
    the stage was cut before its item was whole, and is discarded."""
    try:
        intent = orjson.loads((stage / INTENT).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        intent = None
    item, kept = stage / ITEM, stage / KEPT
    if intent is None or not (item.exists() or kept.exists()):
        # Cut before the package was staged whole: where it was, it still is (or the stage
        # holds a copy of it only).
        _discard(stage, intent)
        return None
    if item.exists():  # else the summary is whole and the package already gone
        _drop_source(stage, intent)
        _record(engine, intent)
        shutil.rmtree(kept, ignore_errors=True)  # a summary cut part-way is made again
        keep_reason(item, kept, str(intent["reason"]))
        durable.fsync_dir(stage)
        delete(item)
        durable.step("refused package deleted")
    target = _free_name(rejected, str(intent["package"]))
    os.rename(kept, target)
    durable.fsync_dir(rejected)
    durable.step("refused package moved aside")
    shutil.rmtree(stage)
    durable.fsync_dir(rejected)
    return target


def _discard(stage: Path, intent: dict[str, str] | None) -> None:
    partial = stage / PARTIAL
    moved_in = intent is not None and not intent.get("left")
    if intent is not None and moved_in and partial.is_dir() and not Path(intent["source"]).exists():
        # It was renamed in, not copied: put it back as it came, to be checked again.
        durable.sweep(partial / REFUSED_NOTE)
        (partial / REFUSED_NOTE).unlink(missing_ok=True)
        os.rename(partial, intent["source"])
    shutil.rmtree(stage)
    durable.fsync_dir(stage.parent)


def _drop_source(stage: Path, intent: dict[str, str]) -> None:
    """A package copied in (from another file system) is deleted where it was once its copy is
    whole; only if it is still the very package staged (the same names and sizes). One left
    where it was is never deleted."""
    source = Path(intent["source"])
    if intent.get("left") or not source.exists():
        return
    copy = stage / ITEM
    if _listing(source) == {k: v for k, v in _listing(copy).items() if k != REFUSED_NOTE}:
        doomed = source.with_name(f".{source.name}.loaded-{os.getpid()}")
        os.rename(source, doomed)
        shutil.rmtree(doomed) if doomed.is_dir() else doomed.unlink()


def _listing(path: Path) -> dict[str, int]:
    if path.is_file():
        return {path.name: path.stat().st_size}
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def _record(engine: sa.Engine, intent: dict[str, str]) -> None:
    token = intent["token"]
    with Session(engine) as session, session.begin():
        recorded = session.scalar(
            sa.select(sa.func.count())
            .select_from(Event)
            .where(Event.kind == "package.refused", Event.details["refusal"].as_string() == token)
        )
        if recorded:
            return
        record(
            session,
            "package.refused",
            ACTOR,
            {"package": intent["package"], "reason": intent["reason"], "refusal": token},
        )
    durable.step("package.refused recorded")


def _free_name(rejected: Path, name: str) -> Path:
    target = rejected / name
    n = 1
    while target.exists():
        n += 1
        target = rejected / f"{name}-{n}"
    return target
