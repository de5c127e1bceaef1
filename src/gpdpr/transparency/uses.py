"""Whom one run read, kept as a file in the run's folder (`uses.bin`), for each person's own
view of their record (`transparency.patient.record_uses`).

The engine makes one token per person the run read (`engines.base.RunUses`): the custodian's
`run_use_token`, SHA-256 of the run's own key (derived from the project's key and the run's
salt, random, one per run) and the person's number, of which the first 16 bytes are kept (files
of the second and third versions, `HEADER_V2` and `HEADER_V3`, hold the second form,
`run_use_token_v2`, an HMAC of the lake pseudonym; files of the first version, `HEADER_V1`,
were made from the project pseudonym: `use_token`). Without the project's key and
the person's pseudonym a token can be neither made nor tested, and no two runs' tokens of one
person match; with them, whether a run read a person is one binary search in its file. A
national run reads tens of millions of people: as rows of a database table their tokens were
most of a run's time and most of the database; made by the engine and kept as a file, they
cost 16 bytes each. Sixteen bytes (128 bits) make a false match between two people's tokens
practically impossible at any number of runs and people.

Layout: a 16-byte header (`HEADER`), the run's salt (16 bytes), then each token as two
big-endian unsigned 64-bit numbers, in ascending order, then (from the third version) a 16-byte
trailer: a state byte (`=` whole, `~` while `forget` is rewriting slots), `check\0\0`, and a
64-bit sum of a mix of every token with its place and of the salt (`_sum`). The sum is checked
before the file answers whether it holds someone (once per process and version of the file),
and `forget` updates it slot by slot, so a flipped byte, a cut or an added byte is reported as
damage (`UsesDamaged`: which file, what is wrong, what to do) and never read as a wrong answer.
Files of the first two versions have no trailer and are read as they are. The erasure cycle
takes an erased person's token out (`forget`), so that no run's file says it read someone who
has been erased.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gpdpr.errors import UserError
from gpdpr.tre.engines.base import RunUses

FILE = "uses.bin"
HEADER = b"gpdpr uses v4\n\0\0"
HEADER_V3 = b"gpdpr uses v3\n\0\0"  # still read: tokens of the second form
HEADER_V2 = b"gpdpr uses v2\n\0\0"  # still read: tokens of the second form, no trailer
HEADER_V1 = b"gpdpr uses v1\n\0\0"  # still read: tokens of the project pseudonym
_MAGIC = b"gpdpr uses v"
_START = len(HEADER) + 16  # where the tokens start (every version)
TRAILER = 16  # bytes after the tokens (third and fourth versions)
_WHOLE, _ERASING, _CHECK = b"=", b"~", b"check\0\0"
_CHUNK = 1 << 20  # tokens summed at a time
# splitmix64's constants: each token's mix is a bijection of it, so one flipped bit always
# changes the sum
_K = tuple(
    np.uint64(k)
    for k in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)
ADVICE = (
    "Nothing was changed. Restore it from a backup of the home (it cannot be made again: it is "
    "the run's record of whom it read, for each person's own view), then try again"
)


class UsesDamaged(UserError, ValueError):
    """A run's file of uses that is damaged: cut short, added to, altered or not one at all."""


@dataclass(frozen=True)
class _Layout:
    version: bytes
    salt: bytes
    people: int
    state: bytes  # _WHOLE or _ERASING (from the third version); _WHOLE for the first two
    check: int | None  # the sum the trailer holds (from the third version)


def keep(folder: Path, uses: RunUses) -> int:
    """Write `folder`/uses.bin; how many people the run read."""
    salt = bytes.fromhex(uses.salt)
    tokens = np.ascontiguousarray(uses.tokens, ">u8")
    with open(folder / FILE, "wb") as out:
        out.write(HEADER + salt)
        out.write(tokens.tobytes())
        out.write(_trailer(_WHOLE, _sum(salt, tokens)))
    return len(uses.tokens)


def basis(folder: Path) -> str | None:
    """What the custodian makes a person's token of the run whose folder this is from
    (`Custodian.use_tokens`): the run's salt (32 hex digits), or `v2:` and the salt for a file
    of the second or third version, `v1:` and the salt for one of the first; None if the run
    kept no file of uses (runs recorded before tokens were kept in files keep them in the
    database). UsesDamaged if its shape is wrong (its sum is checked by `holds`)."""
    path = folder / FILE
    if not path.exists():
        return None
    found = _layout(path)
    salt = found.salt.hex()
    if found.version == HEADER_V1:
        return f"v1:{salt}"
    if found.version in (HEADER_V2, HEADER_V3):
        return f"v2:{salt}"
    return salt


def _layout(path: Path) -> _Layout:
    """The file's version, salt, number of tokens and trailer, its shape checked."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_START)
        f.seek(max(0, size - TRAILER))
        tail = f.read(TRAILER)
    if not head.startswith(_MAGIC[: len(head)]) or len(head) < len(HEADER):
        if len(head) < len(HEADER) and head == _MAGIC[: len(head)]:
            raise UsesDamaged(f"{path} is cut short: {size} bytes, not even its header. {ADVICE}")
        raise UsesDamaged(
            f"{path} is not a file of run uses: it starts {head[:16]!r}, not {_MAGIC!r}. {ADVICE}"
        )
    version = head[: len(HEADER)]
    if version not in (HEADER, HEADER_V3, HEADER_V2, HEADER_V1):
        raise UsesDamaged(
            f"{path} is a file of run uses of a version this gpdpr does not read "
            f"({version.rstrip(bytes(1))!r}; it reads versions 1 to 4): it was made by another "
            f"version of gpdpr, or its header was altered. Run that version, or: {ADVICE}"
        )
    trailer = TRAILER if version in (HEADER, HEADER_V3) else 0
    body = size - _START - trailer
    if body < 0 or body % 16:
        raise UsesDamaged(
            f"{path} is cut short or has bytes added: {size} bytes is not its header, salt, "
            f"whole 16-byte tokens{' and trailer' if trailer else ''}. {ADVICE}"
        )
    if not trailer:
        if len(tail) == TRAILER and tail[:1] in (_WHOLE, _ERASING) and tail[1:8] == _CHECK:
            raise UsesDamaged(
                f"{path} says it is of an older version, but it ends as the later ones do: its "
                f"header was altered. {ADVICE}"
            )
        return _Layout(version, head[len(HEADER) :], body // 16, _WHOLE, None)
    state, mark, check = tail[:1], tail[1:8], int.from_bytes(tail[8:], "big")
    if mark != _CHECK or state not in (_WHOLE, _ERASING):
        raise UsesDamaged(
            f"{path} is cut short or has bytes added: it does not end with its trailer. {ADVICE}"
        )
    return _Layout(version, head[len(HEADER) :], body // 16, state, check)


_checked: dict[tuple[str, int, int, int], int] = {}
SETTLED_NS = 2_000_000_000


def _check(path: Path) -> int:
    """How many tokens the file holds, its sum checked (once per process and version of the
    file: a national run's file is a gigabyte, read whole to sum it)."""
    stat = path.stat()
    seen = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if seen in _checked:
        return _checked[seen]
    # A file changed within the clock's granularity of now could change again unseen by its
    # time stamp: checked, but not remembered as checked.
    settled = time.time_ns() - stat.st_mtime_ns > SETTLED_NS
    found = _layout(path)
    if found.state == _ERASING:
        raise UsesDamaged(
            f"{path}: an erasure cycle was stopped while it took people out of this file. "
            "Run `gpdpr erase` again: it finishes the work, and the file is read again"
        )
    if found.check is not None:
        tokens = _tokens(path, found.people, "r")
        if _sum(found.salt, tokens) != found.check:
            raise UsesDamaged(
                f"{path} was altered or damaged on disk: its tokens and salt no longer add up "
                f"to the sum it keeps, so it could answer wrongly. {ADVICE}"
            )
    if settled:
        _checked[seen] = found.people
    return found.people


def _tokens(path: Path, people: int, mode: Literal["r", "r+"]) -> np.memmap[Any, Any]:
    return np.memmap(path, ">u8", mode, offset=_START, shape=(people, 2))


def _mix(tokens: np.ndarray, first: int) -> np.ndarray:
    """Each token mixed with its place (splitmix64's finaliser): a bijection of the token."""
    hi = tokens[:, 0].astype(np.uint64)
    lo = tokens[:, 1].astype(np.uint64)
    place = np.arange(first, first + len(tokens), dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = hi ^ (lo * _K[0]) ^ (place * _K[1])
        z ^= z >> np.uint64(30)
        z *= _K[2]
        z ^= z >> np.uint64(27)
        z *= _K[3]
        z ^= z >> np.uint64(31)
    mixed: np.ndarray = z
    return mixed


def _sum(salt: bytes, tokens: np.ndarray) -> int:
    total = int.from_bytes(hashlib.sha256(salt).digest()[:8], "big")
    for start in range(0, len(tokens), _CHUNK):
        total += int(_mix(tokens[start : start + _CHUNK], start).sum(dtype=np.uint64))
    return total % (1 << 64)


def _trailer(state: bytes, check: int) -> bytes:
    return state + _CHECK + check.to_bytes(8, "big")


def holds(folder: Path, token: str) -> bool:
    """Whether the run whose folder this is read the person whose token (hex, as `use_token`
    makes it with the run's salt) is given. UsesDamaged if the file is damaged."""
    path = folder / FILE
    people = _check(path)
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
    erased one. A slot never straddles a disk sector, so a crash leaves it old or new. The
    trailer's sum is updated by the slots changed (damage elsewhere stays detectable), marked
    `~` while they are written: a cycle stopped part-way is finished by the next, which sums
    the file afresh. With no one left, the file keeps its header, salt and trailer only."""
    path = folder / FILE
    found = _layout(path)
    trailed = found.check is not None
    people = found.people
    slots = _tokens(path, people, "r+") if people else None
    check = found.check
    if trailed and found.state == _ERASING:
        check = _sum(found.salt, slots if slots is not None else np.empty((0, 2), ">u8"))
    doomed: set[int] = set()
    for token in tokens if slots is not None else ():
        assert slots is not None
        hi, lo = int(token[:16], 16), int(token[16:32], 16)
        first = int(np.searchsorted(slots[:, 0], hi, "left"))
        last = int(np.searchsorted(slots[:, 0], hi, "right"))
        doomed.update(first + int(i) for i in np.flatnonzero(slots[first:last, 1] == lo))
    if not doomed:
        if trailed and found.state == _ERASING:
            _write_trailer(path, people, _WHOLE, check or 0)
        return 0
    assert slots is not None
    if len(doomed) == people:
        del slots
        empty = _sum(found.salt, np.empty((0, 2), ">u8"))
        with open(path, "r+b") as f:
            if trailed:
                f.seek(_START + 16 * people)
                f.write(_trailer(_ERASING, empty))
                f.flush()
                os.fsync(f.fileno())
                f.seek(_START)
                f.write(_trailer(_ERASING, empty))
            f.truncate(_START + (TRAILER if trailed else 0))
            f.flush()
            os.fsync(f.fileno())
        if trailed:
            _write_trailer(path, 0, _WHOLE, empty)
        return people
    kept = np.setdiff1d(np.arange(people), np.fromiter(doomed, np.int64))
    order = sorted(doomed)
    moves = {}
    for slot in order:
        # The kept slot just before it (or, at the start, just after): order is kept.
        at = int(np.searchsorted(kept, slot))
        moves[slot] = int(kept[at - 1] if at > 0 else kept[at])
    if trailed:
        assert check is not None
        index = np.array(order, np.int64)
        before = _mix_at(slots, index)
        after = _mix_at(slots, index, np.array([moves[i] for i in order], np.int64))
        check = (check - before + after) % (1 << 64)
        slots.flush()
        _write_trailer(path, people, _ERASING, check)
    for slot in order:
        slots[slot] = slots[moves[slot]]
    slots.flush()
    del slots
    with open(path, "r+b") as f:
        os.fsync(f.fileno())
    if trailed:
        assert check is not None
        _write_trailer(path, people, _WHOLE, check)
    return len(doomed)


def _mix_at(slots: np.ndarray, places: np.ndarray, sources: np.ndarray | None = None) -> int:
    """The sum of the mixes of the tokens at `sources` (by default `places`) put at `places`."""
    total = 0
    for place, source in zip(places, places if sources is None else sources, strict=True):
        token = np.asarray(slots[int(source) : int(source) + 1])
        total += int(_mix(token, int(place))[0])
    return total


def _write_trailer(path: Path, people: int, state: bytes, check: int) -> None:
    with open(path, "r+b") as f:
        f.seek(_START + 16 * people)
        f.write(_trailer(state, check))
        f.flush()
        os.fsync(f.fileno())
