"""The service's own copy of the log's Merkle tree, so it extends the tree instead of hashing the
whole log again at every start (at a million entries, seconds and a gigabyte each time).

Kept beside the log and apart from its public files, in HOME/.log-tree/:

    0, 1, 2, ...   each level of the tree's stored hashes (level 0: the leaves), appended to
    covered        how many entries, and how many bytes of entries.jsonl, the levels cover

The levels are only ever appended to, and `covered` is replaced (atomically) after them, so a
crash between leaves levels longer than `covered` says: the extra hashes are ignored. A copy that
does not match the signed checkpoint (damaged, or from another log) is thrown away and the tree
computed again from the entries: the copy saves work, it is never trusted over the log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from gpdpr import durable
from gpdpr.transparency.merkle import HASH_BYTES, Tree

COVERED = "covered"


def folder_for(log: Path) -> Path:
    return log.with_name(f".{log.name}-tree")


def load(folder: Path) -> tuple[Tree, int] | None:
    """The tree kept, and the bytes of entries it covers; None if there is none usable."""
    try:
        covered = orjson.loads((folder / COVERED).read_bytes())
        leaves, end = int(covered["leaves"]), int(covered["bytes"])
        levels = []
        n = 0
        while leaves >> n:
            want = (leaves >> n) * HASH_BYTES
            with open(folder / str(n), "rb") as f:
                data = f.read(want)
            if len(data) != want:
                return None
            levels.append(data)
            n += 1
        return Tree.restore(levels), end
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def save(folder: Path, tree: Tree, end: int) -> None:
    """Append to each level what the copy lacks (`tree` extends the tree it covers: see
    `forget` otherwise), then say what it covers."""
    folder.mkdir(mode=0o700, exist_ok=True)
    try:
        before = int(orjson.loads((folder / COVERED).read_bytes())["leaves"])
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        before = 0
    for n in range(tree.depth):
        path = folder / str(n)
        valid = (before >> n) * HASH_BYTES  # hashes beyond this were never covered: a crash's
        have = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as f:
            if have > valid:
                f.truncate(valid)
                have = valid
            f.write(tree.level_tail(n, have))
            f.flush()
    durable.write_file(folder / COVERED, orjson.dumps({"leaves": tree.size, "bytes": end}))


def forget(folder: Path) -> None:
    """Throw the copy away (it does not match the log)."""
    shutil.rmtree(folder, ignore_errors=True)
