"""Reading a Bundle file too large to parse whole (hundreds of MB), in bounded memory.

The file is parsed incrementally (ijson), one `entry` at a time, in one pass: each entry's shape is
checked and its resource written as a line of a spill file of its type, in a private temporary
folder the reader removes when it is done. A Bundle of the wrong shape is quarantined whole, as a
small one is, and what was spilled of it removed. When the pass is done, the names entries give
resources (`fullUrl`) are all known, and the spilled resources' references to them are rewritten.
The reader then reads those files as it reads the export's own NDJSON files.

What is held in memory is one entry at a time, plus a few hundred bytes an entry for the names
other entries may refer to it by (and, in a history, which versions were read): never the
content of the Bundle. A streamed entry's position, in the
quarantine file, is its index in `Bundle.entry` (as in its FHIR path, `Bundle.entry[N]`).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import ijson
import orjson

from gpdpr.practice import fhir_split
from gpdpr.practice.fhir_bundle import FHIR_ID, Repeats, Walker, resolve_references
from gpdpr.practice.fhir_read import Shape

STREAM_BYTES = 32 * 1024 * 1024  # a Bundle file larger than this is streamed, not parsed whole
BOM = b"\xef\xbb\xbf"


class BundleFault(Exception):
    """The file is not one well-formed Bundle: `kind` is "json" (not valid JSON), "object" (not
    a JSON object), "type" (not a Bundle) or "shape" (an element of the wrong shape, at `path`)."""

    def __init__(self, kind: str, path: str | None = None, bundle_id: str | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.path = path
        self.bundle_id = bundle_id


@dataclass
class Streamed:
    """What one streamed Bundle holds: a spill file per resource type, and what was not read."""

    bundle_id: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    # The FHIR path of each resource of a Bundle held inside an entry: (entry index, id) -> path
    nested: dict[tuple[int, str | None], str] = field(default_factory=dict)


def _open(path: Path) -> IO[bytes]:
    f = path.open("rb")
    if f.read(len(BOM)) != BOM:  # a byte-order mark is not part of the JSON
        f.seek(0)
    return f


def _top(path: Path, key: str) -> Any:
    """A top-level element of the Bundle; servers write these before `entry`, so the parse
    usually stops within the first few hundred bytes."""
    with _open(path) as f:
        return next(ijson.items(f, key, use_float=True), None)


def _entries(path: Path) -> Iterator[tuple[int, Any]]:
    """Each entry, found by its bytes and parsed alone (see fhir_split), or, for a file laid out
    otherwise, parsed incrementally (ijson, about a third as fast)."""
    with _open(path) as f:
        found = fhir_split.entries(f)
        if found is not None:
            yield from found
            return
    with _open(path) as f:
        yield from enumerate(ijson.items(f, "entry.item", use_float=True))


def stream(path: Path, into: Path, repeats: Repeats, repeated: str) -> Streamed:
    """Spill the resources of the Bundle file `path` into the folder `into`, a file per type.
    Raises BundleFault for a file that is not one well-formed Bundle; the caller then removes
    what was spilled, and nothing of it is read."""
    with _open(path) as f:
        if not f.read(64).lstrip().startswith(b"{"):
            raise BundleFault("object")
    bundle_id: str | None = None
    try:
        found = _top(path, "id")
        bundle_id = found if type(found) is str and FHIR_ID.match(found) else None
        if _top(path, "resourceType") != "Bundle":
            raise BundleFault("type", "resourceType", bundle_id)
        walker = Walker(_top(path, "type"))
        out = Streamed(bundle_id=bundle_id)
        handles: dict[str, IO[bytes]] = {}
        try:
            spill = partial(_spill, out, handles, into, repeats, repeated)
            with _no_cycles():
                for i, value in _entries(path):
                    one, inner = walker.entry(i, value)
                    for entry in inner:
                        out.nested[(i, entry.rid)] = entry.path
                        spill(i, entry.kind, entry.rid, entry.include, entry.line)
                    if one is not None:
                        # References to names other entries give are resolved once all are known.
                        kind, rid, resource, _, include = one
                        spill(i, kind, rid, include, orjson.dumps(resource))
        finally:
            for handle in handles.values():
                handle.close()
    except (ijson.JSONError, UnicodeDecodeError, fhir_split.NotJson):
        repeats.bundle_refused()
        raise BundleFault("json") from None
    except Shape as shape:
        repeats.bundle_refused()
        raise BundleFault("shape", shape.path, bundle_id) from None
    except BundleFault:
        repeats.bundle_refused()
        raise
    repeats.bundle_read()
    if walker.targets:
        _resolve_spilled(out, walker.targets)
    out.skipped.update(walker.skipped)
    return out


def _spill(
    out: Streamed,
    handles: dict[str, IO[bytes]],
    into: Path,
    repeats: Repeats,
    repeated: str,
    index: int,
    kind: str,
    rid: str | None,
    include: bool,
    line: bytes,
) -> None:
    """Write one resource to the spill file of its type, unless it repeats one already read."""
    if repeats.repeats(kind, rid, include):
        out.skipped[repeated] += 1
        return
    spill = handles.get(kind)
    if spill is None:
        file = into / f"{len(out.files):03d}.ndjson"
        spill = handles[kind] = file.open("xb")
        out.files[kind] = file
    spill.write(b"%d\t%b\n" % (index, line))
    out.counts[kind] += 1


@contextmanager
def _no_cycles() -> Iterator[None]:
    """The cyclic garbage collector paused: a Bundle's entries, parsed and dropped by the
    hundred thousand, are plain JSON values that cannot form a cycle, yet each collection walks
    them all (a third of the time of parsing them)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _resolve_spilled(out: Streamed, targets: dict[str, str]) -> None:
    """Rewrite the spilled resources' references to the names entries give (`fullUrl`), now that
    all are known; a resource of a Bundle held in an entry was resolved within that Bundle."""
    for file in out.files.values():
        done = file.with_suffix(".resolved")
        with file.open("rb") as source, done.open("xb") as sink:
            for raw in source:
                index, _, line = raw.partition(b"\t")
                resource = orjson.loads(line)
                if (int(index), resource.get("id")) not in out.nested:
                    line = orjson.dumps(resolve_references(resource, targets)) + b"\n"
                sink.write(index + b"\t" + line)
        done.replace(file)


def spilled_lines(file: Path) -> Iterator[tuple[int, bytes]]:
    """(entry index, resource line) of each resource a spill file holds."""
    with file.open("rb") as f:
        for raw in f:
            index, _, line = raw.partition(b"\t")
            yield int(index), line
