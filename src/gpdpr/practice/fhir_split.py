"""The entries of a Bundle file's `entry` array, found as byte ranges and parsed one at a time.

Building each entry as Python objects inside an incremental JSON parser costs about four times
what parsing the same bytes with orjson does. So a large Bundle is read in chunks, and in each
the entries' boundaries are found without parsing them: the bytes that give JSON its structure
(quotes, backslashes, brackets) are picked out with numpy, quotes escaped by an odd run of
backslashes dropped, brackets inside strings dropped, and where the depth returns to that of the
array an entry ends. Each entry is then parsed on its own with orjson, which checks it.

Finding every structural byte costs about what parsing does, so it is the way taken only where
the quicker one fails: each few dozen entries, the last place that looks like the end of an entry
(`},{"resource":`, found looking back from the end of a piece) is taken as one, and what comes
before it is parsed in one call. A wrong guess cannot parse (see _taken), and is then dropped.

A chunk always starts between two entries (what follows the last whole entry of a chunk is read
again with the next), so no state crosses a chunk but the depth of the array, which is fixed.
Memory is a chunk plus the largest entry. What is around the array (`resourceType`, `type`, any
element after `entry`) is checked at the end as JSON of its own; a second top-level `entry`
array is refused as out of shape, since its entries would be read twice over.

`entries` gives None for a file whose `entry` array does not start in its first 64 KiB (an
element of megabytes before it): the caller then reads it with ijson instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import orjson

from gpdpr.practice.fhir_read import Shape

CHUNK = 128 * 1024  # small enough that memory does not grow with the Bundle (see the tests)
HEAD = 64 * 1024  # where the `entry` array must start for this way of reading to be taken
MAX_TAIL = 16 * 1024 * 1024  # what may follow the entries, read whole to be checked
ENTRY_KEY = re.compile(rb'"entry"\s*:\s*\[')
# Where one entry most likely ends and the next begins: a closing bracket, a comma, and an object
# opening with a key only a Bundle entry has (or may have first). Only a guess, which the parse
# then proves (see _taken): a guess inside a string, or inside an entry, is never valid JSON.
LIKELY_END = re.compile(
    rb'\}\s*,\s*\{\s*"(?:fullUrl|resource|request|response|search|link|id|extension|modifierExtension)"'
)
LEADING_COMMA = re.compile(rb"\s*,")
PIECE = 16 * 1024  # entries parsed in one call: a few dozen, so memory stays a few hundred KB
QUOTE, BACKSLASH = ord('"'), ord("\\")
# Structural bytes as 1, the rest as 0, by bytes.translate (as fast as a copy).
_MARK = bytes(1 if chr(c) in '"\\{}[]' else 0 for c in range(256))


class NotJson(Exception):
    """The file is not valid JSON (cut short, or damaged)."""


def _structure(buf: bytes) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8], int]:
    """(positions, depth changes) of the brackets of `buf` outside strings, and how many
    unescaped quotes it holds (odd: it ends inside a string). `buf` must start outside one."""
    pos = np.flatnonzero(np.frombuffer(buf.translate(_MARK), np.uint8))
    chars = np.frombuffer(buf, np.uint8)[pos]
    slash = chars == BACKSLASH
    quote = chars == QUOTE
    if slash.any():
        # A quote is escaped when the run of backslashes just before it is odd.
        n = len(pos)
        after_slash = np.zeros(n, bool)
        after_slash[1:] = slash[:-1] & (np.diff(pos) == 1)
        index = np.arange(n)
        run_start = np.maximum.accumulate(np.where(slash & ~after_slash, index, 0))
        escaped = np.zeros(n, bool)
        escaped[1:] = after_slash[1:] & ((index[1:] - run_start[:-1]) % 2 == 1)
        quote &= ~escaped
    quotes = np.cumsum(quote)
    outside = (quotes % 2 == 0) & ~quote & ~slash
    kept = chars[outside]
    change = np.where((kept == ord("{")) | (kept == ord("[")), 1, -1).astype(np.int8)
    return pos[outside], change, int(quotes[-1]) if len(quotes) else 0


def _gap(gap: bytes, leading: bool, trailing: bool) -> list[Any]:
    """What lies between two entries (or before the first, or after the last): a comma where
    one belongs, white space, and values that are not objects or arrays (each an entry, and out
    of shape). Anything else is not JSON."""
    inner = gap.strip()
    if inner == (b"," if leading and trailing else b""):
        return []
    if leading:
        if not inner.startswith(b","):
            raise NotJson
        inner = inner[1:]
    if trailing:
        if not inner.endswith(b","):
            raise NotJson
        inner = inner[:-1]
    try:
        values = orjson.loads(b"[" + inner + b"]")
    except orjson.JSONDecodeError:
        raise NotJson from None
    if not values:
        raise NotJson
    return list(values)


def _start(f: IO[bytes]) -> tuple[bytes, bytes] | None:
    """(the file up to and including the `[` of the top-level `entry`, what was read after it),
    or None where the array does not start in the first chunk."""
    head = f.read(HEAD)
    for found in ENTRY_KEY.finditer(head):
        _, change, quotes = _structure(head[: found.start()])
        if quotes % 2 == 0 and int(change.sum()) == 1:  # a key of the top-level object
            return head[: found.end()], head[found.end() :]
    return None


def entries(f: IO[bytes]) -> Iterator[tuple[int, Any]] | None:
    """(index, value) of each entry of the Bundle in `f`, or None (see the module's note).
    Raises NotJson for a file that is not valid JSON, Shape for a second `entry` array."""
    started = _start(f)
    if started is None:
        return None
    return _entries(f, *started)


def _taken(buf: bytes, at: int, leading: bool) -> tuple[list[Any], int] | None:
    """(the entries of `buf` from `at` up to the last likely end of one within PIECE bytes, or
    beyond where one entry is larger; where that end is), parsed in one call, or None where no
    likely end is found or the guess is wrong. A guessed end is right exactly when what comes
    before it, between brackets, parses: cut inside a string, the string is left open; cut
    inside an entry, its brackets are. So what is taken here is what the exact way of finding
    the entries (by every structural byte, about as costly as parsing them) finds."""
    start = at
    if leading:  # the entries before were taken: a comma must come first
        comma = LEADING_COMMA.match(buf, at)
        if comma is None:
            return None
        start = comma.end()
    end = _likely_end(buf, start, min(len(buf), start + PIECE))
    if end is None:  # an entry larger than a piece
        end = _likely_end(buf, start, len(buf))
    if end is None:
        return None
    try:
        values = orjson.loads(b"[" + buf[start:end] + b"]")
    except orjson.JSONDecodeError:
        return None
    return values, end


def _likely_end(buf: bytes, start: int, stop: int) -> int | None:
    """Where the last entry that seems to end before `stop` ends, looking back from `stop`."""
    close = buf.rfind(b"}", start, stop)
    while close >= 0:
        if LIKELY_END.match(buf, close):
            return close + 1
        close = buf.rfind(b"}", start, close)
    return None


def _entries(f: IO[bytes], head: bytes, buf: bytes) -> Iterator[tuple[int, Any]]:
    index = 0
    while True:
        more = f.read(max(CHUNK, len(buf)))  # an entry larger than a chunk: read twice as much
        buf += more
        at = 0
        while more and (taken := _taken(buf, at, index > 0)) is not None:
            values, at = taken
            for value in values:
                yield index, value
                index += 1
        if at:
            buf = buf[at:]
            continue
        pos, change, _ = _structure(buf)
        depth = np.cumsum(change, dtype=np.int64)
        ends = np.flatnonzero(depth == 0)
        starts = np.flatnonzero((depth == 1) & (change == 1))
        closed = np.flatnonzero(depth < 0)
        if closed.size:
            ends = ends[ends < closed[0]]
        done = 0
        view = memoryview(buf)
        for start_at, end_at in zip(starts[: len(ends)].tolist(), ends.tolist(), strict=True):
            start, stop = int(pos[start_at]), int(pos[end_at]) + 1
            for value in _gap(buf[done:start], index > 0, True):
                yield index, value
                index += 1
            try:
                yield index, orjson.loads(view[start:stop])
            except orjson.JSONDecodeError:
                raise NotJson from None
            index += 1
            done = stop
        if closed.size:
            close = int(pos[closed[0]])
            for value in _gap(buf[done:close], index > 0, False):
                yield index, value
                index += 1
            view.release()
            _check_around(head, buf[close + 1 :], f)
            return
        view.release()
        buf = buf[done:]
        if not more:
            raise NotJson  # the file ends inside the array


def _check_around(head: bytes, tail: bytes, f: IO[bytes]) -> None:
    """What surrounds the array must be JSON too, with no second `entry` array."""
    parts, size = [tail], len(tail)
    while more := f.read(CHUNK):  # in chunks: a read of the most allowed would take it all
        parts.append(more)
        size += len(more)
        if size > MAX_TAIL:
            raise Shape("Bundle")
    tail = b"".join(parts)
    try:
        around = orjson.loads(head + b"]" + tail)
    except orjson.JSONDecodeError:
        raise NotJson from None
    if not isinstance(around, dict) or around.get("entry") != []:
        raise Shape("Bundle.entry")
