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
from dataclasses import dataclass, field
from typing import Any

import orjson

from gpdpr.practice.fhir_read import Shape, local_id, obj, seq, text

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


@dataclass
class Unpacked:
    entries: list[Entry] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def unpack(bundle: dict[str, Any], path: str = "Bundle", depth: int = 0) -> Unpacked:
    """The resources `bundle` holds as data, or `Shape` naming the first element out of shape."""
    kind = bundle.get("type")
    if type(kind) is not str or kind not in BUNDLE_TYPES:
        raise Shape(f"{path}.type")
    out = Unpacked()
    history = kind == "history"
    versions: set[tuple[str, str]] = set()  # in a history, the resources whose newest is read
    held: list[tuple[str, str | None, dict[str, Any], str]] = []
    targets: dict[str, str] = {}  # a name the Bundle gives a resource -> "Type/id"
    for i, value in enumerate(seq(bundle.get("entry"), f"{path}.entry")):
        where = f"{path}.entry[{i}]"
        entry = obj(value, where)
        if entry is None:
            raise Shape(where)
        full_url = text(entry.get("fullUrl"), f"{where}.fullUrl")
        request = obj(entry.get("request"), f"{where}.request") or {}
        method = text(request.get("method"), f"{where}.request.method")
        search = obj(entry.get("search"), f"{where}.search") or {}
        mode = text(search.get("mode"), f"{where}.search.mode")
        resource = obj(entry.get("resource"), f"{where}.resource")
        if mode is not None and mode not in DATA_MODES and mode != "outcome":
            raise Shape(f"{where}.search.mode")
        if method == "DELETE":
            if history:  # the resource's newest version is its deletion: read none of it
                deleted = _target(text(request.get("url"), f"{where}.request.url"))
                if deleted is not None and deleted in versions:
                    out.skipped[OLDER] += 1
                    continue
                if deleted is not None:
                    versions.add(deleted)
            out.skipped[DELETED] += 1
            continue
        if resource is None:
            out.skipped[NO_RESOURCE] += 1
            continue
        rtype = resource.get("resourceType")
        if type(rtype) is not str or not RESOURCE_TYPE.match(rtype):
            raise Shape(f"{where}.resource.resourceType")
        if mode == "outcome" or rtype == "OperationOutcome":
            out.skipped[OUTCOME] += 1
            continue
        if rtype == "MessageHeader":
            out.skipped[HEADER] += 1
            continue
        if rtype == "Bundle":
            if depth + 1 >= MAX_DEPTH:
                raise Shape(f"{where}.resource")
            inner = unpack(resource, f"{where}.resource", depth + 1)
            out.entries.extend(inner.entries)
            out.skipped.update(inner.skipped)
            continue
        rid = resource.get("id")
        if not (type(rid) is str and rid):
            rid = _id_from(full_url, rtype)
            if rid is not None:
                resource = {**resource, "id": rid}
        if history and type(rid) is str:
            if (rtype, rid) in versions:
                out.skipped[OLDER] += 1
                continue
            versions.add((rtype, rid))
        if rid is not None and full_url is not None:
            targets[full_url] = f"{rtype}/{rid}"
        held.append((rtype, rid if type(rid) is str else None, resource, where))
    for rtype, rid, resource, where in held:
        resolved = _resolve(resource, targets) if targets else resource
        out.entries.append(Entry(rtype, rid, orjson.dumps(resolved), where))
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


def _resolve(value: Any, targets: dict[str, str]) -> Any:
    """`value` with every reference to a name the Bundle gives a resource rewritten to the
    `Type/id` form; unchanged parts are shared, not copied."""
    if type(value) is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if key == "reference" and type(item) is str and item in targets:
                new: Any = targets[item]
            elif type(item) is dict or type(item) is list:
                new = _resolve(item, targets)
            else:
                continue
            if new is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
        return changed if changed is not None else value
    if type(value) is list:
        items = [_resolve(item, targets) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value
