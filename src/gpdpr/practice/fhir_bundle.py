"""Unpacking a FHIR Bundle into the resources its entries hold, as if each were a line of its own.

Inside a Bundle a resource is often named only by its entry's `fullUrl` (`urn:uuid:...`, or the
server's absolute URL), and other entries refer to it by that name. Those references are rewritten
to the `Type/id` form before the reader sees them, and an entry without an id takes the uuid of
its `urn:uuid:` fullUrl, so a Condition whose subject is a Patient entry's uuid is that patient's.

Only entries that hold a resource as data are kept: an entry with no resource (a transaction's
request alone), a DELETE, and a search outcome are counted, never read. The shape of the Bundle is
checked as it is walked; a wrong one raises `Shape` naming its FHIR path, and the caller
quarantines the whole Bundle, since half of one could tie records to the wrong patient.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gpdpr.practice.fhir_read import Shape, local_id, seq, text

# The Bundle types whose entries are read as records. A document's Composition and a message's
# header are never records (the one never collected, the other skipped); a history holds versions
# of each resource, newest first, and only the newest is read (none, if it was deleted).
BUNDLE_TYPES = frozenset(
    {"collection", "transaction", "searchset", "batch", "history", "document", "message"}
)
DATA_MODES = frozenset({"match", "include"})  # search.mode of an entry that holds data
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_DEPTH = 3  # a Bundle held in a Bundle is unpacked too, but never without end

NO_RESOURCE = "Bundle entry without a resource (a request alone)"
DELETED = "Bundle entry deleting a resource"
OUTCOME = "Bundle entry with an OperationOutcome (not a record)"
REPEATED = "Bundle entry repeating a resource already read"
OLDER = "Bundle entry of an older version of a resource (a history)"
HEADER = "Bundle entry with a message header (not a record)"


@dataclass
class Entry:
    """One resource a Bundle holds: its type, its line (references resolved) and where it is."""

    kind: str
    rid: str | None
    line: bytes
    path: str  # FHIR path of the entry, e.g. "Bundle.entry[3]"
    include: bool = False  # a searchset's include, which each page may give again

    @property
    def index(self) -> int:
        """The index of the entry of the outermost Bundle that holds it: its position."""
        return int(self.path[len("Bundle.entry[") :].split("]", 1)[0])


@dataclass
class Unpacked:
    entries: list[Entry] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


Held = tuple[str, str | None, dict[str, Any], str, bool]  # (type, id, resource, path, include)


class Repeats:
    """Which entries repeat a resource already read from a Bundle, the same whether a Bundle is
    parsed whole or streamed. An include is context a search gives again on each page (or twice
    on one): an include of a resource already read, or any entry repeating one read as an
    include, is the same resource and is read once, the others counted. Any other repeat is
    read, and the rules quarantine it as a duplicate record id, keeping the first. What a Bundle
    gave counts only once the whole Bundle has been read: one refused half way gives nothing."""

    def __init__(self) -> None:
        # Every resource read from a Bundle is remembered, by a hash of its type and id alone
        # (not the two strings: a third of the memory), as a large Bundle has millions.
        self.read: set[int] = set()
        self.included: set[int] = set()
        self.pending_read: set[int] = set()
        self.pending_included: set[int] = set()

    def repeated(self, entry: Entry) -> bool:
        return self.repeats(entry.kind, entry.rid, entry.include)

    def repeats(self, kind: str, rid: str | None, include: bool) -> bool:
        if rid is None:
            return False
        named = hash((kind, rid))
        if include:
            if named in self.read or named in self.pending_read:
                return True
            self.pending_included.add(named)
        elif named in self.included or named in self.pending_included:
            return True
        self.pending_read.add(named)
        return False

    def bundle_read(self) -> None:
        self.read |= self.pending_read
        self.included |= self.pending_included
        self.bundle_refused()

    def bundle_refused(self) -> None:
        self.pending_read = set()
        self.pending_included = set()


class Walker:
    """The entries of one Bundle, taken one at a time (from a parsed Bundle, or streamed from a
    file too large to parse whole), and what must be remembered between them: which resources a
    history has already given its newest version of, and the names entries give resources."""

    def __init__(self, kind: Any, path: str = "Bundle", depth: int = 0) -> None:
        if type(kind) is not str or kind not in BUNDLE_TYPES:
            raise Shape(f"{path}.type")
        self.history = kind == "history"
        self.path = path
        self.depth = depth
        self.versions: set[tuple[str, str]] = set()
        self.targets: dict[str, str] = {}  # a name the Bundle gives a resource -> "Type/id"
        self.skipped: Counter[str] = Counter()

    def entry(self, i: int, value: Any) -> tuple[Held | None, Sequence[Entry]]:
        """Entry `i`: the resource it holds as data (its references not yet resolved), or none,
        and the resources of a Bundle it holds (resolved within that Bundle)."""
        if type(value) is not dict:
            raise Shape(f"{self.path}.entry[{i}]")
        # Each element's shape is checked in turn (inline: a large Bundle has millions of
        # entries); its path is written only when it is wrong.
        get = value.get
        full_url, request, search, resource = (
            get("fullUrl"),
            get("request"),
            get("search"),
            get("resource"),
        )
        if full_url is not None and type(full_url) is not str:
            raise Shape(f"{self.path}.entry[{i}].fullUrl")
        method = mode = None
        if request is not None:
            method = _shaped(request, dict, self.path, i, ".request").get("method")
            _shaped(method, str, self.path, i, ".request.method")
        if search is not None:
            mode = _shaped(search, dict, self.path, i, ".search").get("mode")
            _shaped(mode, str, self.path, i, ".search.mode")
            if mode is not None and mode not in DATA_MODES and mode != "outcome":
                raise Shape(f"{self.path}.entry[{i}].search.mode")
        if resource is not None and type(resource) is not dict:
            raise Shape(f"{self.path}.entry[{i}].resource")
        if method == "DELETE" and request is not None:  # (a method is only ever a request's)
            if self.history:  # the resource's newest version is its deletion: read none of it
                url = text(request.get("url"), f"{self.path}.entry[{i}].request.url")
                deleted = _target(url)
                if deleted is not None and deleted in self.versions:
                    self.skipped[OLDER] += 1
                    return None, ()
                if deleted is not None:
                    self.versions.add(deleted)
            self.skipped[DELETED] += 1
            return None, ()
        if resource is None:
            self.skipped[NO_RESOURCE] += 1
            return None, ()
        rtype = resource.get("resourceType")
        if type(rtype) is not str or (rtype not in _TYPES_SEEN and not _type_named(rtype)):
            raise Shape(f"{self.path}.entry[{i}].resource.resourceType")
        if mode == "outcome" or rtype == "OperationOutcome":
            self.skipped[OUTCOME] += 1
            return None, ()
        if rtype == "MessageHeader":
            self.skipped[HEADER] += 1
            return None, ()
        where = f"{self.path}.entry[{i}]"
        if rtype == "Bundle":
            if self.depth + 1 >= MAX_DEPTH:
                raise Shape(f"{where}.resource")
            inner = unpack(resource, f"{where}.resource", self.depth + 1)
            self.skipped.update(inner.skipped)
            return None, inner.entries
        rid = resource.get("id")
        if not (type(rid) is str and rid):
            rid = _id_from(full_url, rtype)
            if rid is not None:
                resource = {**resource, "id": rid}
        if self.history and type(rid) is str:
            if (rtype, rid) in self.versions:
                self.skipped[OLDER] += 1
                return None, ()
            self.versions.add((rtype, rid))
        if rid is not None and full_url is not None:
            self.targets[full_url] = f"{rtype}/{rid}"
        include = mode == "include"
        return (rtype, rid if type(rid) is str else None, resource, where, include), ()


_TYPES_SEEN: set[str] = set()  # resource types already found well formed


def _type_named(rtype: str) -> bool:
    if not RESOURCE_TYPE.match(rtype):
        return False
    if len(_TYPES_SEEN) < 1_000:  # FHIR has about 150; any others are checked each time
        _TYPES_SEEN.add(rtype)
    return True


def _shaped(value: Any, kind: type, path: str, i: int, element: str) -> Any:
    if value is None or type(value) is kind:
        return value
    raise Shape(f"{path}.entry[{i}]{element}")


def resolved(held: Held, targets: dict[str, str]) -> Entry:
    """A held resource as an entry, its references to names the Bundle gives rewritten."""
    rtype, rid, resource, where, include = held
    value = resolve_references(resource, targets) if targets else resource
    return Entry(rtype, rid, orjson.dumps(value), where, include)


def unpack(bundle: dict[str, Any], path: str = "Bundle", depth: int = 0) -> Unpacked:
    """The resources `bundle` holds as data, or `Shape` naming the first element out of shape."""
    walker = Walker(bundle.get("type"), path, depth)
    out = Unpacked(skipped=walker.skipped)
    held: list[Held] = []
    for i, value in enumerate(seq(bundle.get("entry"), f"{path}.entry")):
        one, inner = walker.entry(i, value)
        out.entries.extend(inner)
        if one is not None:
            held.append(one)
    out.entries.extend(resolved(one, walker.targets) for one in held)
    return out


def _target(url: str | None) -> tuple[str, str] | None:
    """(type, id) a history's DELETE names by its request url, `Type/id` or an absolute URL."""
    if url is None:
        return None
    parts = url.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) < 2 or not RESOURCE_TYPE.match(parts[-2]) or not FHIR_ID.match(parts[-1]):
        return None
    return parts[-2], parts[-1]


def _id_from(full_url: str | None, rtype: str) -> str | None:
    """The id an entry without one is known by: the uuid of its `urn:uuid:` fullUrl, or the last
    part of its absolute URL."""
    if full_url is None:
        return None
    found = full_url[9:] if full_url.startswith("urn:uuid:") else local_id(full_url, rtype)
    return found if found is not None and FHIR_ID.match(found) else None


def resolve_references(value: Any, targets: dict[str, str]) -> Any:
    """`value` with every reference to a name the Bundle gives a resource rewritten to the
    `Type/id` form; unchanged parts are shared, not copied."""
    if type(value) is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if key == "reference" and type(item) is str and item in targets:
                new: Any = targets[item]
            elif type(item) is dict or type(item) is list:
                new = resolve_references(item, targets)
            else:
                continue
            if new is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
        return changed if changed is not None else value
    if type(value) is list:
        items = [resolve_references(item, targets) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value
