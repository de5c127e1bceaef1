"""Whom one run read, kept as a file in the run's folder (`uses.bin`), for each person's own
view of their record (`transparency.patient.record_uses`).

The engine makes one token per person the run read (`engines.base.RunUses`): the custodian's
`run_use_token`, an HMAC under the project's key of the run's salt (random, one per run) and the
person's lake pseudonym, of which the first 16 bytes are kept (files of the first version,
`HEADER_V1`, were made from the project pseudonym: `use_token`). Without the project's key and
the person's pseudonym a token can be neither made nor tested, and no two runs' tokens of one
person match; with them, whether a run read a person is one binary search in its file. A
national run reads tens of millions of people: as rows of a database table their tokens were
most of a run's time and most of the database; made by the engine and kept as a file, they
cost 16 bytes each. Sixteen bytes (128 bits) make a false match between two people's tokens
practically impossible at any number of runs and people.

Layout: a 16-byte header (`HEADER`), the run's salt (16 bytes), then each token as two
big-endian unsigned 64-bit numbers, in ascending order. The erasure cycle takes an erased
person's token out (`forget`), so that no run's file says it read someone who has been erased.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gpdpr.tre.engines.base import RunUses

FILE = "uses.bin"
HEADER = b"gpdpr uses v2\n\0\0"
HEADER_V1 = b"gpdpr uses v1\n\0\0"  # still read: tokens of the project pseudonym
_START = len(HEADER) + 16  # where the tokens start (both versions)


def keep(folder: Path, uses: RunUses) -> int:
    """Write `folder`/uses.bin; how many people the run read."""
    with open(folder / FILE, "wb") as out:
        out.write(HEADER + bytes.fromhex(uses.salt))
        out.write(np.ascontiguousarray(uses.tokens, ">u8").tobytes())
    return len(uses.tokens)


def basis(folder: Path) -> str | None:
    """What the custodian makes a person's token of the run whose folder this is from
    (`Custodian.use_tokens`): the run's salt (32 hex digits), or `v1:` and the salt for a file
    of the first version; None if the run kept no file of uses (runs recorded before tokens
    were kept in files keep them in the database)."""
    path = folder / FILE
    if not path.exists():
        return None
    with open(path, "rb") as f:
        head = f.read(_START)
    version = head[: len(HEADER)]
    if (
        len(head) != _START
        or version not in (HEADER, HEADER_V1)
        or (path.stat().st_size - _START) % 16
    ):
        raise ValueError(f"{path} is not a file of run uses (see gpdpr.transparency.uses)")
    salt = head[len(HEADER) :].hex()
    return salt if version == HEADER else f"v1:{salt}"


def holds(folder: Path, token: str) -> bool:
    """Whether the run whose folder this is read the person whose token (hex, as `use_token`
    makes it with the run's salt) is given."""
    path = folder / FILE
    people = (path.stat().st_size - _START) // 16
    if people == 0:
        return False
    tokens = np.memmap(path, ">u8", "r", offset=_START, shape=(people, 2))
    hi, lo = int(token[:16], 16), int(token[16:32], 16)
    first = int(np.searchsorted(tokens[:, 0], hi, "left"))
    last = int(np.searchsorted(tokens[:, 0], hi, "right"))
    return bool((tokens[first:last, 1] == lo).any())


def forget(folder: Path, tokens: Iterable[str]) -> int:
    """Take these people's tokens (hex, as the custodian makes them for this run) out of
    the run's file: the erasure cycle does this for everyone it erases, since the custodian
    could otherwise still tell that this run read them. How many were found and removed.

    Each is overwritten in place by its nearest kept neighbour, so the file stays in order and
    only 16-byte slots are written (a national run's file is a gigabyte, and is touched at each
    cycle that erases someone it read): the file may then list a kept person twice, never an
    erased one. A slot never straddles a disk sector, so a crash leaves it old or new. With no
    one left, the file keeps its header and salt only."""
    path = folder / FILE
    people = (path.stat().st_size - _START) // 16
    if people == 0:
        return 0
    slots = np.memmap(path, ">u8", "r+", offset=_START, shape=(people, 2))
    doomed: set[int] = set()
    for token in tokens:
        hi, lo = int(token[:16], 16), int(token[16:32], 16)
        first = int(np.searchsorted(slots[:, 0], hi, "left"))
        last = int(np.searchsorted(slots[:, 0], hi, "right"))
        doomed.update(first + int(i) for i in np.flatnonzero(slots[first:last, 1] == lo))
    if not doomed:
        return 0
    if len(doomed) == people:
        del slots
        with open(path, "r+b") as f:
            f.truncate(_START)
            os.fsync(f.fileno())
        return people
    kept = np.setdiff1d(np.arange(people), np.fromiter(doomed, np.int64))
    for slot in sorted(doomed):
        # The kept slot just before it (or, at the start, just after): order is kept.
        at = int(np.searchsorted(kept, slot))
        slots[slot] = slots[kept[at - 1] if at > 0 else kept[at]]
    slots.flush()
    del slots
    with open(path, "r+b") as f:
        os.fsync(f.fileno())
    return len(doomed)
