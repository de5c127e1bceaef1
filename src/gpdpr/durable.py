"""Writing files that matter so that a crash or a full disk never leaves half of one, and the
named steps where a multi-step operation may be cut.

`write_file` is the one way a file that matters is written: to a temporary name beside it,
flushed and fsync'd, renamed (or linked, when it must not replace one) into place, and its folder
fsync'd, so a reader finds the old file or the new one, never a torn one, and a full disk leaves
the old one untouched.

`step` marks a point between two durable effects of an operation (a lake commit, a log append, a
key written). Crash consistency is tested by cutting a command at each of them: with
GPDPR_CRASH_TRACE set to a file, every step reached is appended to it (one name a line); with
GPDPR_CRASH_AT=N the process kills itself (SIGKILL) on reaching the N-th step, and with
GPDPR_FULL_AT=N it fails there as a full disk would (ENOSPC). Unset, a step costs one lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from gpdpr.errors import UserError

TRACE = "GPDPR_CRASH_TRACE"
CRASH_AT = "GPDPR_CRASH_AT"
FULL_AT = "GPDPR_FULL_AT"

_reached = 0


def step(name: str) -> None:
    """A named point in a multi-step operation (see the module's docstring)."""
    global _reached
    if not (TRACE in os.environ or CRASH_AT in os.environ or FULL_AT in os.environ):
        return
    _reached += 1
    trace = os.environ.get(TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{name}\n")
    if os.environ.get(CRASH_AT) == str(_reached):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FULL_AT) == str(_reached):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


def write_file(path: Path, data: bytes, mode: int = 0o644, replace: bool = True) -> None:
    """Write `path` whole or not at all (see the module's docstring). With `replace=False` an
    existing file is never overwritten: FileExistsError, and the old one stays. One writer per
    file at a time (its callers hold a lock, or make a file only one process makes): a partial
    copy a killed writer left is removed."""
    sweep(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        step(f"write {path.name}")
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_dir(path.parent)


def sweep(path: Path) -> None:
    """Remove what a killed `write_file` of `path` left: its partial copy (for a key, a copy
    of a secret)."""
    for stale in path.parent.glob(f".{path.name}.*.partial"):
        stale.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a file created, renamed or deleted in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The errors a person fixes at the machine, not in gpdpr: the disk, its permissions.
_DISK = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "the disk reported an input/output error",
}


def disk_problem(exc: BaseException) -> str | None:
    """What a disk or permission failure was, in words; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in _DISK:
        where = f" at {exc.filename}" if exc.filename else ""
        return f"{_DISK[exc.errno]}{where}"
    # The lake's Delta library and SQLite report them as exceptions of their own, in words.
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _WORDED:
        text = str(exc)
        for code, words in _DISK.items():
            if os.strerror(code) in text:
                return words
        if "database or disk is full" in text:
            return _DISK[errno.ENOSPC]
    return None


_WORDED = {"deltalake", "sqlalchemy", "sqlite3", "pyarrow"}


@contextmanager
def disk_errors(doing: str, advice: str) -> Iterator[None]:
    """Turn a full disk or a permission failure while `doing` into a message (UserError) saying
    what happened and `advice` (what state things are in, what to do); other errors pass."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        problem = disk_problem(exc)
        if problem is None:
            raise
        raise UserError(f"{doing} stopped: {problem}. {advice}") from None


ANY_COMMAND_ADVICE = (
    "Free space (or fix the permissions) and run the command again: what gpdpr writes that "
    "matters is written whole or not at all, and database changes are undone"
)


@contextmanager
def disk_messages(command: str, fail: Callable[[str], NoReturn]) -> Iterator[None]:
    """Around a whole command: a full disk or a permission failure that no part of it worded
    ends in `fail` with a message naming `command`, never a traceback; other errors pass."""
    try:
        yield
    except Exception as exc:
        problem = disk_problem(exc)
        if problem is None:
            raise
        fail(f"{command} stopped: {problem}. {ANY_COMMAND_ADVICE}")
