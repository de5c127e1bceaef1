"""The engines' scratch folders (DuckDB's spill folder, Spark's local and warehouse folders, a
Spark run's files), made in the system's temporary folder and named for the process that made
them: `gpdpr-<kind>-<pid>-<random>`. An engine removes its own when it ends; one that was killed
cannot, and its folder may hold rows of the views it computed on, people the erasure cycle has
since erased among them. So the cycle removes every such folder whose process is gone (`sweep`),
as it removes what killed runs leave under the home (gpdpr.tre.runs.tidy).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"gpdpr-(?:duckdb|spark|spark-run)-([0-9]+)-[A-Za-z0-9_]+")


def folder(kind: str) -> str:
    """A new scratch folder for an engine of this kind (`duckdb`, `spark`, `spark-run`)."""
    return tempfile.mkdtemp(prefix=f"gpdpr-{kind}-{os.getpid()}-")


def temporary(kind: str) -> tempfile.TemporaryDirectory[str]:
    """`folder`, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix=f"gpdpr-{kind}-{os.getpid()}-")


def sweep(root: Path | None = None) -> int:
    """Remove the scratch folders of engines whose process is gone (in the system's temporary
    folder, or `root`); how many. A folder of a living process is left: its engine is using
    it. A process id used again by another process keeps its folder until a later sweep."""
    where = Path(root if root is not None else tempfile.gettempdir())
    removed = 0
    try:
        found = list(where.iterdir())
    except OSError:
        return 0
    for path in found:
        match = _NAME.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        if not alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed += not path.exists()
    return removed


def alive(pid: int) -> bool:
    """Whether the process `pid` (one of this machine's) may still be running: what it left is
    not to be removed while it might be."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a process id: not ours to judge
    return True
